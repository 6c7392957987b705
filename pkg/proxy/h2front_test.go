package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/h2"
	"github.com/offloadlb/lb/pkg/tlsterm"
)

// h2Serve serves HTTP/2 over TLS on 127.0.0.1 with hs's handler, as a
// listener does, and returns its address and the HTTP/2 server.
func h2Serve(t *testing.T, hs *harness, o h2.Options) (string, *h2.Server) {
	t.Helper()
	if o.MaxHead == 0 {
		o.MaxHead = 16 << 10
	}
	if o.MaxBody == 0 {
		o.MaxBody = 1 << 20
	}
	o.Logger = quietLogger{}
	s := h2.NewServer(hs.h, o)
	addr := testutil.ServeTLS(t, []string{"h2"}, func(c *tls.Conn) {
		// What a listener delivers for a client that negotiated h2.
		s.ServeConn(&tlsterm.Conn{Conn: c, Version: tls.VersionTLS13, Proto: "h2"})
	}, s.GoAway, s.Close)
	return addr, s
}

// h2Front returns an HTTP/2 client for an h2Serve front end.
func h2Front(t *testing.T, hs *harness, maxBody int) (*http.Client, string) {
	t.Helper()
	addr, _ := h2Serve(t, hs, h2.Options{MaxBody: maxBody, IdleTimeout: time.Minute})
	// HTTP/2 only: a client that fell back to HTTP/1.1 would test the
	// wrong front end.
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://" + addr
}

// TestHTTP2FlowControl: a response larger than the client's window is
// sent as the client gives credit, and arrives whole.
func TestHTTP2FlowControl(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 12<<10) // 192 KiB, streamed
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		io.WriteString(w, big)
		return true
	})
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, h2.Options{WriteTimeout: 5 * time.Second})
	r := testutil.DialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	r.Request(1, "GET", "/big", true)
	got := 0
	resp := r.Response(1, func(n int) uint32 {
		got += n
		if got > 1000 {
			t.Fatalf("%d bytes sent on a 1000-byte window", got)
		}
		if got < 1000 {
			return 0
		}
		got = 0
		return 1000 // credit only when the window is used up
	})
	if !resp.Ended || string(resp.Body) != big {
		t.Fatalf("got %d bytes (want %d), ended %v, reset %v", len(resp.Body), len(big), resp.Ended, resp.Reset)
	}
	// The window grown by SETTINGS mid-connection applies to new streams.
	r.Framer.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	r.Request(3, "GET", "/big", true)
	if resp := r.Response(3, func(n int) uint32 { return uint32(n) }); string(resp.Body) != big {
		t.Fatalf("second response: %d bytes", len(resp.Body))
	}
}

// TestHTTP2BrokenBodyResets: a backend that breaks off its body makes lb
// reset the stream, so the client cannot take the part for the whole.
func TestHTTP2BrokenBodyResets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.Read(buf)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 500000\r\n\r\n")
				c.Write(bytes.Repeat([]byte("x"), 100<<10))
			}()
		}
	}()
	hs := newHarness(t, harnessOpts{backends: []string{ln.Addr().String()}})
	addr, _ := h2Serve(t, hs, h2.Options{})
	r := testutil.DialH2(t, addr)
	r.Request(1, "GET", "/", true)
	resp := r.Response(1, func(n int) uint32 { return uint32(n) })
	if !resp.RST || resp.Ended {
		t.Fatalf("stream ended cleanly after %d of 500000 bytes", len(resp.Body))
	}
	if resp.Status != "200" || resp.Header["content-length"] != "500000" {
		t.Errorf("head: %s %v", resp.Status, resp.Header)
	}
}

// TestHTTP2Malformed: requests HTTP/2 calls malformed are reset with
// PROTOCOL_ERROR and never reach a backend; the connection goes on.
func TestHTTP2Malformed(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, h2.Options{})
	r := testutil.DialH2(t, addr)
	cases := []struct {
		name   string
		method string
		path   string
		fields []string
	}{
		{"connection header", "GET", "/", []string{"connection", "keep-alive"}},
		{"transfer-encoding", "POST", "/", []string{"transfer-encoding", "chunked"}},
		{"te other than trailers", "GET", "/", []string{"te", "gzip"}},
		{"upgrade", "GET", "/", []string{"upgrade", "websocket"}},
		{"space in path", "GET", "/a HTTP/1.1\r\nX: y", nil},
		{"bad method", "GE T", "/", nil},
		{"conflicting content-length", "POST", "/", []string{"content-length", "1", "content-length", "2"}},
		{"negative content-length", "POST", "/", []string{"content-length", "-1"}},
	}
	id := uint32(1)
	for _, c := range cases {
		r.Request(id, c.method, c.path, true, c.fields...)
		resp := r.Response(id, nil)
		if !resp.RST || resp.Reset != http2.ErrCodeProtocol {
			t.Errorf("%s: status %q, reset %v %v; want PROTOCOL_ERROR", c.name, resp.Status, resp.RST, resp.Reset)
		}
		id += 2
	}
	// A body longer than its content-length.
	r.Request(id, "POST", "/", false, "content-length", "3")
	r.Framer.WriteData(id, true, []byte("12345"))
	if resp := r.Response(id, nil); resp.Reset != http2.ErrCodeProtocol {
		t.Errorf("body past content-length: %+v", resp)
	}
	id += 2
	if e.hits.Load() != 0 {
		t.Errorf("%d malformed requests reached the backend", e.hits.Load())
	}
	r.Request(id, "GET", "/fine", true)
	if resp := r.Response(id, nil); resp.Status != "200" {
		t.Errorf("connection unusable after malformed requests: %+v", resp)
	}
}

// TestHTTP2ExpectContinue: a client that waits for 100 Continue gets it,
// and the backend gets the body without the Expect header.
func TestHTTP2ExpectContinue(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, h2.Options{})
	r := testutil.DialH2(t, addr)
	r.Request(1, "PUT", "/up", false, "expect", "100-continue", "content-length", "5")
	for {
		f := r.Next()
		if mh, ok := f.(*http2.MetaHeadersFrame); ok {
			if mh.Fields[0].Value != "100" {
				t.Fatalf("first answer %v, want 100", mh.Fields)
			}
			break
		}
	}
	r.Framer.WriteData(1, true, []byte("hello"))
	resp := r.Response(1, nil)
	s := decodeSeen(t, string(resp.Body))
	if resp.Status != "200" || s.Body != "hello" || s.Header.Get("Expect") != "" {
		t.Errorf("status %s, backend saw body %q, Expect %q", resp.Status, s.Body, s.Header.Get("Expect"))
	}
}

// startSlowEcho is an echo backend whose answers to /slow wait until
// release is closed.
func startSlowEcho(t *testing.T) (*echoBackend, chan struct{}) {
	release := make(chan struct{})
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/slow" {
			<-release
		}
		return false
	})
	return e, release
}

// TestHTTP2ResetAndRefuse: past the stream limit new streams are refused
// (safe to retry) while the requests already open are served; streams
// the client then resets free their places at once, their backend
// exchanges cut, and the connection serves again.
func TestHTTP2ResetAndRefuse(t *testing.T) {
	e, release := startSlowEcho(t)
	defer close(release)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, responseTimeout: 10 * time.Second})
	addr, _ := h2Serve(t, hs, h2.Options{MaxStreams: 4})
	r := testutil.DialH2(t, addr)
	// Four requests held by the backend.
	for id := uint32(1); id <= 7; id += 2 {
		r.Request(id, "GET", "/slow", true)
	}
	waitFor(t, "four requests at the backend", func() bool { return hs.up.Pool.Backends[0].Active() == 4 })
	r.Request(9, "GET", "/", true)
	if resp := r.Response(9, nil); resp.Reset != http2.ErrCodeRefusedStream {
		t.Errorf("stream over the limit: %+v, want REFUSED_STREAM", resp)
	}
	for id := uint32(1); id <= 7; id += 2 {
		if err := r.Framer.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for id := uint32(11); ; id += 2 {
		r.Request(id, "GET", "/", true)
		resp := r.Response(id, nil)
		if resp.Status == "200" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused after the slow requests were reset: %+v", resp)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHTTP2ResetCutsBackendExchange: a client that resets its stream
// while the backend works on the answer cuts the backend's request within
// a second (the backend sees its connection close); the backend's slot is
// free, and it is not counted as having failed.
func TestHTTP2ResetCutsBackendExchange(t *testing.T) {
	cut := make(chan time.Time, 1)
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/held" {
			return false
		}
		select {
		case <-r.Context().Done(): // the connection closed
			cut <- time.Now()
		case <-time.After(10 * time.Second):
		}
		return true
	})
	hc := config.Health{Check: "none", Interval: config.Duration{Duration: time.Hour}, PassiveFailures: 1}
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, responseTimeout: 10 * time.Second, health: &hc})
	addr, _ := h2Serve(t, hs, h2.Options{})
	r := testutil.DialH2(t, addr)
	b := hs.up.Pool.Backends[0]
	r.Request(1, "GET", "/held", true)
	waitFor(t, "the request at the backend", func() bool { return e.hits.Load() == 1 })
	reset := time.Now()
	if err := r.Framer.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-cut:
		t.Logf("backend request cut %s after the reset", at.Sub(reset).Round(time.Millisecond))
	case <-time.After(time.Second):
		t.Fatal("the backend request was not cut within 1 s of the reset")
	}
	waitFor(t, "the backend's slot free", func() bool { return b.Active() == 0 })
	if !b.Up() || b.Failures() != 0 {
		t.Errorf("backend up %v, %d failures: a client's reset was held against it", b.Up(), b.Failures())
	}
	// The connection goes on.
	r.Request(3, "GET", "/", true)
	if resp := r.Response(3, nil); resp.Status != "200" {
		t.Errorf("next request: %+v", resp)
	}
}

// TestHTTP2ResetWithFinishLetsBackendAnswer: with on_client_abort =
// "finish", a reset stream's request is seen through at its backend,
// which answers in its own time.
func TestHTTP2ResetWithFinishLetsBackendAnswer(t *testing.T) {
	outcome := make(chan string, 1)
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/held" {
			return false
		}
		select {
		case <-r.Context().Done():
			outcome <- "cut"
		case <-time.After(300 * time.Millisecond):
			outcome <- "answered"
		}
		return false
	})
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, responseTimeout: 10 * time.Second, finishAborted: true})
	addr, _ := h2Serve(t, hs, h2.Options{})
	r := testutil.DialH2(t, addr)
	b := hs.up.Pool.Backends[0]
	r.Request(1, "GET", "/held", true)
	waitFor(t, "the request at the backend", func() bool { return e.hits.Load() == 1 })
	if err := r.Framer.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	if got := <-outcome; got != "answered" {
		t.Fatalf("the backend's request was %s; on_client_abort = finish sees it through", got)
	}
	waitFor(t, "the backend's slot free", func() bool { return b.Active() == 0 })
	if b.Failures() != 0 {
		t.Errorf("%d failures", b.Failures())
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHTTP2GoAway: a graceful stop answers the streams already open,
// ignores newer ones and closes the connection; an idle connection closes
// after IdleTimeout with a GOAWAY.
func TestHTTP2GoAway(t *testing.T) {
	e, release := startSlowEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, responseTimeout: 10 * time.Second})
	addr, a := h2Serve(t, hs, h2.Options{IdleTimeout: 300 * time.Millisecond})
	r := testutil.DialH2(t, addr)
	r.Request(1, "GET", "/slow", true)
	for e.hits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	a.GoAway()
	var last uint32
	for {
		if ga, ok := r.Next().(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeNo {
				t.Fatalf("GOAWAY %v", ga.ErrCode)
			}
			last = ga.LastStreamID
			break
		}
	}
	if last != 1 {
		t.Errorf("GOAWAY last stream %d, want 1", last)
	}
	r.Request(3, "GET", "/late", true) // past the last stream: ignored
	close(release)
	var status string
	for {
		f, err := r.Framer.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Logf("connection ended: %v", err)
			}
			break
		}
		if mh, ok := f.(*http2.MetaHeadersFrame); ok {
			if mh.StreamID != 1 {
				t.Errorf("stream %d answered after GOAWAY", mh.StreamID)
			}
			status = mh.Fields[0].Value
		}
	}
	if status != "200" || e.hits.Load() != 1 {
		t.Errorf("open stream got %q; backend hits %d, want 1", status, e.hits.Load())
	}

	// Idle timeout, on a server not stopping.
	hs2 := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr2, _ := h2Serve(t, hs2, h2.Options{IdleTimeout: 300 * time.Millisecond})
	r2 := testutil.DialH2(t, addr2)
	r2.Request(1, "GET", "/", true)
	if resp := r2.Response(1, nil); resp.Status != "200" {
		t.Fatalf("%+v", resp)
	}
	start := time.Now()
	for {
		f, err := r2.Framer.ReadFrame()
		if err != nil {
			t.Fatalf("closed without GOAWAY after %s: %v", time.Since(start), err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second || ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
				t.Errorf("GOAWAY %v last %d after %s", ga.ErrCode, ga.LastStreamID, d)
			}
			break
		}
	}
	if _, err := r2.Framer.ReadFrame(); err == nil {
		t.Error("connection open after the idle GOAWAY")
	}
}

// TestHTTP2EarlyAnswerThenData: a request answered before its body
// arrived (413) is reset with NO_ERROR; the DATA the client had already
// sent is ignored, not answered with a reset each.
func TestHTTP2EarlyAnswerThenData(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, h2.Options{MaxBody: 1 << 10})
	r := testutil.DialH2(t, addr)
	r.Request(1, "POST", "/up", false, "content-length", "100000")
	resp := r.Response(1, nil)
	if resp.Status != "413" {
		t.Fatalf("status %q, want 413", resp.Status)
	}
	chunk := make([]byte, 1000)
	for range 5 {
		r.Framer.WriteData(1, false, chunk)
	}
	r.Framer.WritePing(false, [8]byte{1})
	for {
		switch f := r.Next().(type) {
		case *http2.RSTStreamFrame:
			if f.ErrCode != http2.ErrCodeNo {
				t.Errorf("RST_STREAM %v for DATA sent before the reset was seen", f.ErrCode)
			}
		case *http2.PingFrame:
			if f.IsAck() {
				if e.hits.Load() != 0 {
					t.Error("the refused request reached the backend")
				}
				return
			}
		}
	}
}
