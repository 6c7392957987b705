package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

var jsonUnmarshal = json.Unmarshal

// clientTLS is the TLS the load generators speak: TLS 1.3 with X25519
// (what OpenSSL 3.0 in HAProxy and NGINX negotiates too), and no session
// resumption, so every connection is a full handshake.
func clientTLS() *tls.Config {
	return &tls.Config{
		InsecureSkipVerify:     true,
		MinVersion:             tls.VersionTLS13,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		SessionTicketsDisabled: true,
		ClientSessionCache:     nil,
		NextProtos:             []string{"http/1.1"},
	}
}

const oneRequest = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

// handshakeClient opens a new TLS connection per request for a while and
// prints a JSON hsResult.
func handshakeClient(args []string) int {
	fs := flag.NewFlagSet("handshake-client", flag.ExitOnError)
	addr := fs.String("addr", "", "address")
	conc := fs.Int("c", 16, "concurrent connections")
	d := fs.Duration("d", 10*time.Second, "duration")
	fs.Parse(args)

	var hs, resumed atomic.Int64
	var suite atomic.Value // string: what the last handshake negotiated
	var errs errorTally
	stop := time.Now().Add(*d)
	cfg := clientTLS()
	runWorkers(*conc, func() {
		buf := make([]byte, 4096)
		for time.Now().Before(stop) {
			if err := oneHandshake(*addr, cfg, buf, &resumed, &suite); err != nil {
				errs.add(err)
				continue
			}
			hs.Add(1)
		}
	})
	r := hsResult{Handshakes: int(hs.Load()), Resumed: int(resumed.Load()), Errors: int(errs.count()), LastError: errs.lastText()}
	r.TLS, _ = suite.Load().(string)
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// errorTally counts a client's failures and keeps the text of the last.
// Any number of goroutines may add to one; the zero errorTally has
// counted none.
type errorTally struct {
	n    atomic.Int64
	last atomic.Value // string
}

func (t *errorTally) add(err error) {
	t.n.Add(1)
	t.last.Store(err.Error())
}

func (t *errorTally) count() int64 { return t.n.Load() }

// lastText is the last failure's text, "" when there was none.
func (t *errorTally) lastText() string {
	s, _ := t.last.Load().(string)
	return s
}

// runWorkers runs work on n goroutines at once and returns when every
// one has.
func runWorkers(n int, work func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	wg.Wait()
}

// oneHandshake makes one full handshake and request; it counts a
// resumed session in resumed and stores what was negotiated in suite.
func oneHandshake(addr string, cfg *tls.Config, buf []byte, resumed *atomic.Int64, suite *atomic.Value) error {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		return err
	}
	st := c.ConnectionState()
	if st.DidResume {
		resumed.Add(1)
	}
	suite.Store(tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite) + " " + st.CurveID.String())
	if _, err := io.WriteString(c, oneRequest); err != nil {
		return err
	}
	// Read the whole response until the proxy closes.
	n := 0
	for {
		m, err := c.Read(buf)
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if n < 12 || string(buf[9:12]) != "200" {
		return fmt.Errorf("bad answer %q", buf[:min(n, 40)])
	}
	return nil
}

// idleClient opens n TLS connections, sends one keep-alive request on
// each, prints "ready" and holds them open.
func idleClient(args []string) int {
	fs := flag.NewFlagSet("idle-client", flag.ExitOnError)
	addr := fs.String("addr", "", "address")
	n := fs.Int("n", 5000, "connections")
	hold := fs.Duration("hold", 30*time.Second, "how long to hold them")
	fs.Parse(args)
	cfg := clientTLS()
	conns := make([]net.Conn, 0, *n)
	sem := make(chan struct{}, 32)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range *n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			raw, err := net.DialTimeout("tcp", *addr, 10*time.Second)
			if err != nil {
				failed.Add(1)
				return
			}
			c := tls.Client(raw, cfg)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
				failed.Add(1)
				c.Close()
				return
			}
			br := bufio.NewReader(c)
			// Status line, headers, then the 100-byte body.
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					failed.Add(1)
					c.Close()
					return
				}
				if line == "\r\n" {
					break
				}
			}
			io.ReadFull(br, make([]byte, 100))
			c.SetDeadline(time.Time{})
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Fprintf(os.Stderr, "idle-client: %d connections failed\n", f)
	}
	fmt.Println("ready")
	time.Sleep(*hold)
	for _, c := range conns {
		c.Close()
	}
	return 0
}
