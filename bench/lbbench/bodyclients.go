package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/offloadlb/lb/pkg/config"
)

// The uploads and downloads scenarios' backend and clients: one goroutine
// per connection, small buffers, bodies generated as they are sent
// (pattern.go) and never stored.

// bodyResult is what upload-client and download-client print.
type bodyResult struct {
	N          int     `json:"n"`
	Completed  int64   `json:"completed"`
	Failed     int64   `json:"failed"`
	Checked    int64   `json:"checked"`    // bodies whose hash or bytes were compared
	Mismatched int64   `json:"mismatched"` // wrong byte count or content; also counted in Failed
	Bytes      int64   `json:"bytes"`      // body bytes of the completed transfers
	WallS      float64 `json:"wall_s"`     // from the client's start to its last transfer's end
	RampS      float64 `json:"ramp_s"`     // until every transfer had its connection and had started
	// Errors counts failures by kind (at most 8 kinds, then "other").
	Errors map[string]int `json:"errors,omitempty"`
	// Sample is a few checked transfers, as the backend or the client saw them.
	Sample []string `json:"sample,omitempty"`
}

// bodyTally collects a client's outcomes; any number of goroutines may
// add to one.
type bodyTally struct {
	completed, failed, checked, mismatched, bytes atomic.Int64
	mu                                            sync.Mutex
	errors                                        map[string]int
	sample                                        []string
	lastStart                                     atomic.Int64 // unix ns
}

func (t *bodyTally) fail(err error) {
	t.failed.Add(1)
	var mm *mismatch
	if errors.As(err, &mm) {
		t.mismatched.Add(1)
	}
	k := errKind(err)
	t.mu.Lock()
	if t.errors == nil {
		t.errors = map[string]int{}
	}
	if _, ok := t.errors[k]; !ok && len(t.errors) >= 8 {
		k = "other"
	}
	t.errors[k]++
	t.mu.Unlock()
}

func (t *bodyTally) addSample(s string) {
	t.mu.Lock()
	if len(t.sample) < 3 {
		t.sample = append(t.sample, s)
	}
	t.mu.Unlock()
}

func (t *bodyTally) started() {
	now := time.Now().UnixNano()
	for {
		old := t.lastStart.Load()
		if now <= old || t.lastStart.CompareAndSwap(old, now) {
			return
		}
	}
}

func (t *bodyTally) result(n int, start time.Time) bodyResult {
	r := bodyResult{N: n, Completed: t.completed.Load(), Failed: t.failed.Load(), Checked: t.checked.Load(),
		Mismatched: t.mismatched.Load(), Bytes: t.bytes.Load(), WallS: time.Since(start).Seconds(),
		Errors: t.errors, Sample: t.sample}
	if ls := t.lastStart.Load(); ls > 0 {
		r.RampS = time.Unix(0, ls).Sub(start).Seconds()
	}
	return r
}

// mismatch is a transfer whose bytes were not the ones sent.
type mismatch struct{ what string }

func (m *mismatch) Error() string { return "mismatch: " + m.what }

// errKind names a failure without the addresses and ports that make
// every connection's error text different.
func errKind(err error) string {
	var mm *mismatch
	var op *net.OpError
	switch {
	case errors.As(err, &mm):
		return mm.Error()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &op):
		return op.Op + ": " + op.Err.Error()
	}
	s := err.Error()
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// sizeValue is a flag holding a byte count written as lb's config
// writes sizes: "1048576", "64KiB", "10MiB".
type sizeValue int64

func (s *sizeValue) String() string { return formatSize(int64(*s)) }

func (s *sizeValue) Set(v string) error {
	n, err := config.ParseSize(v)
	if err != nil {
		return err
	}
	if n < 0 {
		return fmt.Errorf("negative size %q", v)
	}
	*s = sizeValue(n)
	return nil
}

func sizeFlag(fs *flag.FlagSet, name string, def int64, usage string) *sizeValue {
	v := sizeValue(def)
	fs.Var(&v, name, usage)
	return &v
}

// formatSize writes n with the largest binary unit that divides it.
func formatSize(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.name)
		}
	}
	return strconv.FormatInt(n, 10)
}

// sockbufControl sets SO_RCVBUF and SO_SNDBUF (where not 0) on a socket
// before it connects or listens; accepted sockets inherit a listener's.
// A set size turns off the kernel's autotuning, which would otherwise
// let megabytes of a slow transfer wait in the load generators' own
// socket buffers rather than at the proxy.
func sockbufControl(rcv, snd int) func(network, address string, c syscall.RawConn) error {
	if rcv == 0 && snd == 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if rcv > 0 {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcv)
			}
			if snd > 0 && serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, snd)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// bodyBackend is the uploads and downloads scenarios' backend, HTTP/1.1
// with keep-alive:
//   - POST or PUT, any path: reads the body (Content-Length or chunked)
//     at -rate bytes per second at most, then answers 200 with
//     "bytes=N sha256=HEX\n" of what it read;
//   - GET /download/SEED/SIZE: 200 with SIZE bytes of the body with that
//     seed (pattern.go), as fast as the proxy takes them;
//   - anything else: 200 "ok\n" (the bench's readiness check).
func bodyBackend(args []string) int {
	fs := flag.NewFlagSet("body-backend", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "address")
	rate := sizeFlag(fs, "rate", 1<<20, "bytes per second each connection reads a request body at; 0 for no limit")
	sockbuf := sizeFlag(fs, "sockbuf", 64<<10, "SO_RCVBUF and SO_SNDBUF of accepted connections; 0 leaves them to the kernel")
	fs.Parse(args)
	lc := net.ListenConfig{Control: sockbufControl(int(*sockbuf), int(*sockbuf))}
	ln, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "body-backend:", err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			// Out of descriptors, most likely: wait rather than exit.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go serveBodies(c, int64(*rate))
	}
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, blockSize); return &b }}

func serveBodies(c net.Conn, rate int64) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		switch {
		case req.Method == http.MethodPost || req.Method == http.MethodPut:
			n, sum, err := drainPaced(req.Body, rate)
			if err != nil {
				return
			}
			msg := fmt.Sprintf("bytes=%d sha256=%x\n", n, sum)
			if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg); err != nil {
				return
			}
		case strings.HasPrefix(req.URL.Path, "/download/"):
			io.Copy(io.Discard, req.Body)
			seed, size, ok := parseDownloadPath(req.URL.Path)
			if !ok {
				io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return
			}
			if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", size); err != nil {
				return
			}
			if err := writePattern(c, seed, size); err != nil {
				return
			}
		default:
			io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"); err != nil {
				return
			}
		}
		if req.Close {
			return
		}
	}
}

// drainPaced reads r to its end, no faster than rate bytes per second
// (0: as fast as it comes), and returns the count and SHA-256.
func drainPaced(r io.Reader, rate int64) (int64, []byte, error) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	if rate > 0 {
		// About 16 reads a second.
		buf = buf[:min(int64(len(buf)), max(4096, rate/16))]
	}
	h := sha256.New()
	var n int64
	start := time.Now()
	for {
		m, err := r.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			return n, h.Sum(nil), nil
		}
		if err != nil {
			return n, nil, err
		}
		if rate > 0 {
			if wait := time.Until(start.Add(time.Duration(n * int64(time.Second) / rate))); wait > 0 {
				time.Sleep(wait)
			}
		}
	}
}

// writePattern writes size bytes of the body with this seed, one writev
// of a block's stamp and the shared base at a time, so a connection
// holds no block of its own.
func writePattern(c net.Conn, seed uint64, size int64) error {
	var st [blockStamp]byte
	for i, off := int64(0), int64(0); off < size; i++ {
		n := min(int64(blockSize), size-off)
		stamp(st[:], seed, i)
		var bufs net.Buffers
		if n <= blockStamp {
			bufs = net.Buffers{st[:n]}
		} else {
			bufs = net.Buffers{st[:], patternBase[blockStamp:n]}
		}
		if _, err := bufs.WriteTo(c); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func parseDownloadPath(p string) (seed uint64, size int64, ok bool) {
	parts := strings.Split(strings.TrimPrefix(p, "/download/"), "/")
	if len(parts) != 2 {
		return 0, 0, false
	}
	seed, err1 := strconv.ParseUint(parts[0], 10, 64)
	size, err2 := strconv.ParseInt(parts[1], 10, 64)
	return seed, size, err1 == nil && err2 == nil && size >= 0
}

// bodyClientFlags are the flags upload-client and download-client share.
type bodyClientFlags struct {
	addr       string
	n          int
	size       *sizeValue
	timeout    time.Duration
	checkEvery int
	sockbuf    *sizeValue
	dialers    int
}

func (f *bodyClientFlags) register(fs *flag.FlagSet, n int, size int64) {
	fs.StringVar(&f.addr, "addr", "", "the proxy's TLS address")
	fs.IntVar(&f.n, "n", n, "concurrent transfers, one connection each")
	f.size = sizeFlag(fs, "size", size, "body size")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "the whole run; transfers not done by then fail")
	fs.IntVar(&f.checkEvery, "check-every", 20, "compare the content (hash) of one transfer in this many; every byte count is checked")
	f.sockbuf = sizeFlag(fs, "sockbuf", 64<<10, "socket buffer of each connection (SO_SNDBUF for uploads, SO_RCVBUF for downloads); 0 leaves it to the kernel")
	fs.IntVar(&f.dialers, "dialers", 64, "connections being opened (TLS handshakes) at once")
}

// dial opens one TLS connection, at most f.dialers at a time.
func (f *bodyClientFlags) dial(d *net.Dialer, sem chan struct{}, deadline time.Time) (*tls.Conn, error) {
	sem <- struct{}{}
	defer func() { <-sem }()
	raw, err := d.Dial("tcp", f.addr)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(deadline)
	c := tls.Client(raw, clientTLS())
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// uploadClient runs -n concurrent POSTs of -size generated bytes each
// and prints a JSON bodyResult.
func uploadClient(args []string) int {
	fs := flag.NewFlagSet("upload-client", flag.ExitOnError)
	var f bodyClientFlags
	f.register(fs, 1000, 10<<20)
	chunked := fs.Bool("chunked", false, "send Transfer-Encoding: chunked rather than Content-Length")
	fs.Parse(args)
	d := &net.Dialer{Timeout: 10 * time.Second, Control: sockbufControl(0, int(*f.sockbuf))}
	sem := make(chan struct{}, f.dialers)
	start := time.Now()
	deadline := start.Add(f.timeout)
	var t bodyTally
	var wg sync.WaitGroup
	for i := range f.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seed := uint64(i + 1)
			check := f.checkEvery > 0 && i%f.checkEvery == 0
			c, err := f.dial(d, sem, deadline)
			if err != nil {
				t.fail(err)
				return
			}
			defer c.Close()
			t.started()
			if err := upload(c, seed, int64(*f.size), *chunked, check, &t); err != nil {
				t.fail(err)
				return
			}
			t.completed.Add(1)
			t.bytes.Add(int64(*f.size))
		}()
	}
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(t.result(f.n, start))
	return 0
}

// chunkRoom is the space before a block for its chunk-size line.
const chunkRoom = 10

func upload(c *tls.Conn, seed uint64, size int64, chunked, check bool, t *bodyTally) error {
	framing := fmt.Sprintf("Content-Length: %d", size)
	if chunked {
		framing = "Transfer-Encoding: chunked"
	}
	if _, err := fmt.Fprintf(c, "POST /upload/%d HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n%s\r\n\r\n", seed, framing); err != nil {
		return err
	}
	// [chunk-size line][block]["\r\n"]: one write per block.
	buf := make([]byte, chunkRoom+blockSize+2)
	block := buf[chunkRoom : chunkRoom+blockSize]
	copy(block, patternBase)
	var h hash.Hash
	if check {
		h = sha256.New()
	}
	for i, off := int64(0), int64(0); off < size; i++ {
		n := int(min(int64(blockSize), size-off))
		stamp(block, seed, i)
		if h != nil {
			h.Write(block[:n])
		}
		out := block[:n]
		if chunked {
			line := strconv.FormatInt(int64(n), 16) + "\r\n"
			copy(buf[chunkRoom-len(line):], line)
			copy(buf[chunkRoom+n:], "\r\n")
			out = buf[chunkRoom-len(line) : chunkRoom+n+2]
		}
		if _, err := c.Write(out); err != nil {
			return earlyAnswer(c, err)
		}
		off += int64(n)
	}
	if chunked {
		if _, err := io.WriteString(c, "0\r\n\r\n"); err != nil {
			return earlyAnswer(c, err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
	if err != nil {
		return err
	}
	text, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	var got int64
	var sum string
	if _, err := fmt.Sscanf(string(text), "bytes=%d sha256=%s", &got, &sum); err != nil {
		return fmt.Errorf("answer %q", text)
	}
	if got != size {
		return &mismatch{fmt.Sprintf("backend read %d bytes of %d", got, size)}
	}
	if h != nil {
		t.checked.Add(1)
		if want := hex.EncodeToString(h.Sum(nil)); sum != want {
			return &mismatch{"sha256 differs"}
		}
		t.addSample(fmt.Sprintf("upload %d: backend read bytes=%d sha256=%s, as sent", seed, got, sum))
	}
	return nil
}

// earlyAnswer turns a failed write into the proxy's answer when it sent
// one before closing (a 413, say), else returns err.
func earlyAnswer(c *tls.Conn, err error) error {
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if resp, rerr := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil); rerr == nil {
		return fmt.Errorf("status %d before the body was sent", resp.StatusCode)
	}
	return err
}

// downloadClient runs -n concurrent GETs of -size bytes each, reading
// each response no faster than -rate bytes per second, and prints a JSON
// bodyResult.
func downloadClient(args []string) int {
	fs := flag.NewFlagSet("download-client", flag.ExitOnError)
	var f bodyClientFlags
	f.register(fs, 10000, 1<<20)
	rate := sizeFlag(fs, "rate", 16<<10, "bytes per second each connection reads at; 0 for no limit")
	fs.Parse(args)
	d := &net.Dialer{Timeout: 10 * time.Second, Control: sockbufControl(int(*f.sockbuf), 0)}
	sem := make(chan struct{}, f.dialers)
	start := time.Now()
	deadline := start.Add(f.timeout)
	var t bodyTally
	var wg sync.WaitGroup
	for i := range f.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seed := uint64(i + 1)
			check := f.checkEvery > 0 && i%f.checkEvery == 0
			c, err := f.dial(d, sem, deadline)
			if err != nil {
				t.fail(err)
				return
			}
			defer c.Close()
			if err := download(c, seed, int64(*f.size), int64(*rate), check, &t); err != nil {
				t.fail(err)
				return
			}
			t.completed.Add(1)
			t.bytes.Add(int64(*f.size))
		}()
	}
	wg.Wait()
	json.NewEncoder(os.Stdout).Encode(t.result(f.n, start))
	return 0
}

// downloadTick is how often a slow reader takes its next share of bytes.
const downloadTick = 250 * time.Millisecond

func download(c *tls.Conn, seed uint64, size, rate int64, check bool, t *bodyTally) error {
	if _, err := fmt.Fprintf(c, "GET /download/%d/%d HTTP/1.1\r\nHost: localhost\r\n\r\n", seed, size); err != nil {
		return err
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		return &mismatch{fmt.Sprintf("Content-Length %d for %d bytes", resp.ContentLength, size)}
	}
	t.started()
	buf := make([]byte, 8<<10)
	var off int64
	share := int64(-1) // bytes per tick; -1: no limit
	if rate > 0 {
		share = max(1, rate*int64(downloadTick)/int64(time.Second))
	}
	next := time.Now()
	for off < size {
		allowed := share
		for (allowed > 0 || share < 0) && off < size {
			want := int64(len(buf))
			if share > 0 {
				want = min(want, allowed)
			}
			m, err := resp.Body.Read(buf[:min(want, size-off)])
			if check && m > 0 && !patternMatches(seed, off, buf[:m]) {
				return &mismatch{fmt.Sprintf("content differs at byte %d", off)}
			}
			off += int64(m)
			allowed -= int64(m)
			if err == io.EOF {
				if off < size {
					return &mismatch{fmt.Sprintf("body ended at %d bytes of %d", off, size)}
				}
				break
			}
			if err != nil {
				return err
			}
		}
		if share > 0 {
			next = next.Add(downloadTick)
			time.Sleep(time.Until(next))
		}
	}
	if check {
		t.checked.Add(1)
		t.addSample(fmt.Sprintf("download %d: %d bytes, each the one sent", seed, off))
	}
	return nil
}
