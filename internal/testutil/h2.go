package testutil

import (
	"bytes"
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/offloadlb/lb/internal/certgen"
)

// Certificate is a self-signed certificate for localhost.
func Certificate(tb testing.TB) tls.Certificate {
	tb.Helper()
	pair, err := certgen.SelfSigned("localhost")
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// ServeTLS accepts TLS connections on 127.0.0.1 with Certificate,
// offering the ALPN protocols protos, and hands each to serve, its
// handshake done, on a goroutine of its own. It returns the address.
// When the test ends the listener closes and stop is called; the serve
// calls then have 5 seconds to return before kill is called, and are
// waited for.
func ServeTLS(tb testing.TB, protos []string, serve func(*tls.Conn), stop, kill func()) string {
	tb.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{Certificate(tb)}, NextProtos: protos})
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					tc.Close()
					return
				}
				serve(tc)
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-accepting
		stop()
		done := make(chan struct{})
		go func() {
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			kill()
			<-done
		}
	})
	return ln.Addr().String()
}

// H2Client is an HTTP/2 client that writes and reads frames itself, to
// send what a well-behaved client would not and see each frame a server
// sends. It is used by one goroutine at a time.
type H2Client struct {
	T      testing.TB
	Conn   *tls.Conn
	Framer *http2.Framer // reads header blocks whole (MetaHeadersFrame)
	enc    *hpack.Encoder
	hbuf   bytes.Buffer
}

// DialH2 connects over TLS with ALPN h2, sends the preface and settings,
// and reads until the server's SETTINGS, which it acknowledges. The
// connection has a 10-second deadline and closes when the test ends.
func DialH2(tb testing.TB, addr string, settings ...http2.Setting) *H2Client {
	tb.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		tb.Fatal(err)
	}
	r := &H2Client{T: tb, Conn: c, Framer: http2.NewFramer(c, c)}
	r.Framer.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		tb.Fatal(err)
	}
	if err := r.Framer.WriteSettings(settings...); err != nil {
		tb.Fatal(err)
	}
	for {
		f := r.Next()
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			if err := r.Framer.WriteSettingsAck(); err != nil {
				tb.Fatal(err)
			}
			return r
		}
	}
}

// Next reads a frame, failing the test on error.
func (r *H2Client) Next() http2.Frame {
	r.T.Helper()
	f, err := r.Framer.ReadFrame()
	if err != nil {
		r.T.Fatalf("read frame: %v", err)
	}
	return f
}

// Request sends a request's HEADERS: the pseudo-fields of method on path
// (scheme https, authority lb.test), then fields as name, value pairs.
// end ends the stream.
func (r *H2Client) Request(id uint32, method, path string, end bool, fields ...string) {
	r.hbuf.Reset()
	for _, kv := range [][2]string{{":method", method}, {":scheme", "https"}, {":authority", "lb.test"}, {":path", path}} {
		if err := r.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]}); err != nil {
			r.T.Fatal(err)
		}
	}
	for i := 0; i+1 < len(fields); i += 2 {
		if err := r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			r.T.Fatal(err)
		}
	}
	if err := r.Framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		r.T.Fatal(err)
	}
}

// H2Response is what a stream received.
type H2Response struct {
	Status string
	Header map[string]string // "interim" holds a 1xx status
	Body   []byte
	Ended  bool          // END_STREAM seen
	Reset  http2.ErrCode // RST_STREAM code, if reset
	RST    bool          // RST_STREAM seen
}

// Response reads frames until stream id ends or is reset, answering
// PINGs as a client must; a GOAWAY fails the test. onData, if not nil, is
// told of each DATA frame's length and returns the credit to give back
// (connection and stream), 0 for none.
func (r *H2Client) Response(id uint32, onData func(n int) uint32) *H2Response {
	r.T.Helper()
	resp := &H2Response{Header: map[string]string{}}
	for !resp.Ended && !resp.RST {
		switch f := r.Next().(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			for _, hf := range f.Fields {
				if hf.Name == ":status" {
					if hf.Value[0] == '1' {
						resp.Header["interim"] = hf.Value
					} else {
						resp.Status = hf.Value
					}
				} else {
					resp.Header[hf.Name] = hf.Value
				}
			}
			resp.Ended = f.StreamEnded()
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			resp.Body = append(resp.Body, f.Data()...)
			resp.Ended = f.StreamEnded()
			if onData != nil && len(f.Data()) > 0 {
				if inc := onData(len(f.Data())); inc > 0 {
					// A broken connection fails the next read (Next).
					_ = r.Framer.WriteWindowUpdate(0, inc)
					_ = r.Framer.WriteWindowUpdate(id, inc)
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				resp.RST, resp.Reset = true, f.ErrCode
			}
		case *http2.GoAwayFrame:
			r.T.Fatalf("GOAWAY %v while waiting for stream %d", f.ErrCode, id)
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = r.Framer.WritePing(true, f.Data) // a broken connection fails the next read (Next)
			}
		}
	}
	return resp
}
