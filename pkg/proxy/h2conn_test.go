package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/offloadlb/lb/pkg/tlsterm"
)

// h2Serve serves HTTP/2 over TLS on 127.0.0.1 with the HTTP2 side of hs's
// handler, as a listener does, and returns its address and the HTTP2.
func h2Serve(t *testing.T, hs *harness, o HTTP2Options) (string, *HTTP2) {
	t.Helper()
	if o.MaxHead == 0 {
		o.MaxHead = 16 << 10
	}
	if o.MaxBody == 0 {
		o.MaxBody = 1 << 20
	}
	o.Logger = quietLogger{}
	a := NewHTTP2(hs.h, o)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{testCertificate(t)}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	go func() {
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
				// What a listener delivers for a client that negotiated h2.
				a.ServeConn(&tlsterm.Conn{Conn: tc, Version: tls.VersionTLS13, Proto: "h2"})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		a.GoAway()
		done := make(chan struct{})
		go func() {
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			a.Close()
			<-done
		}
	})
	return ln.Addr().String(), a
}

// h2Front returns an HTTP/2 client for an h2Serve front end.
func h2Front(t *testing.T, hs *harness, maxBody int) (*http.Client, string) {
	t.Helper()
	addr, _ := h2Serve(t, hs, HTTP2Options{MaxBody: maxBody, IdleTimeout: time.Minute})
	// HTTP/2 only: a client that fell back to HTTP/1.1 would test the
	// wrong front end.
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://" + addr
}

// rawH2 is an HTTP/2 client that writes and reads frames itself.
type rawH2 struct {
	t    *testing.T
	c    *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

// dialH2 connects, sends the preface and settings, and reads until the
// server's SETTINGS.
func dialH2(t *testing.T, addr string, settings ...http2.Setting) *rawH2 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hbuf)
	io.WriteString(c, http2.ClientPreface)
	r.fr.WriteSettings(settings...)
	for {
		f := r.next()
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			r.fr.WriteSettingsAck()
			return r
		}
	}
}

// next reads a frame, failing the test on error.
func (r *rawH2) next() http2.Frame {
	r.t.Helper()
	f, err := r.fr.ReadFrame()
	if err != nil {
		r.t.Fatalf("read frame: %v", err)
	}
	return f
}

// request sends a request's HEADERS; fields are name, value pairs after
// the pseudo-fields of a GET of path.
func (r *rawH2) request(id uint32, method, path string, end bool, fields ...string) {
	r.hbuf.Reset()
	for _, kv := range [][2]string{{":method", method}, {":scheme", "https"}, {":authority", "lb.test"}, {":path", path}} {
		r.enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	for i := 0; i+1 < len(fields); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		r.t.Fatal(err)
	}
}

// h2Resp is what a stream received.
type h2Resp struct {
	status string
	header map[string]string
	body   []byte
	ended  bool          // END_STREAM seen
	reset  http2.ErrCode // RST_STREAM code, if reset
	rst    bool
}

// response reads frames until stream id ends or is reset, answering
// other frames as a client must; onData may return credit to give back.
func (r *rawH2) response(id uint32, onData func(n int) uint32) *h2Resp {
	r.t.Helper()
	resp := &h2Resp{header: map[string]string{}}
	for !resp.ended && !resp.rst {
		switch f := r.next().(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			for _, hf := range f.Fields {
				if hf.Name == ":status" {
					if hf.Value[0] == '1' {
						resp.header["interim"] = hf.Value
					} else {
						resp.status = hf.Value
					}
				} else {
					resp.header[hf.Name] = hf.Value
				}
			}
			resp.ended = f.StreamEnded()
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			resp.body = append(resp.body, f.Data()...)
			resp.ended = f.StreamEnded()
			if onData != nil && len(f.Data()) > 0 {
				if inc := onData(len(f.Data())); inc > 0 {
					r.fr.WriteWindowUpdate(0, inc)
					r.fr.WriteWindowUpdate(id, inc)
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				resp.rst, resp.reset = true, f.ErrCode
			}
		case *http2.GoAwayFrame:
			r.t.Fatalf("GOAWAY %v while waiting for stream %d", f.ErrCode, id)
		case *http2.PingFrame:
			if !f.IsAck() {
				r.fr.WritePing(true, f.Data)
			}
		}
	}
	return resp
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
	addr, _ := h2Serve(t, hs, HTTP2Options{WriteTimeout: 5 * time.Second})
	r := dialH2(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	r.request(1, "GET", "/big", true)
	got := 0
	resp := r.response(1, func(n int) uint32 {
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
	if !resp.ended || string(resp.body) != big {
		t.Fatalf("got %d bytes (want %d), ended %v, reset %v", len(resp.body), len(big), resp.ended, resp.reset)
	}
	// The window grown by SETTINGS mid-connection applies to new streams.
	r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
	r.request(3, "GET", "/big", true)
	if resp := r.response(3, func(n int) uint32 { return uint32(n) }); string(resp.body) != big {
		t.Fatalf("second response: %d bytes", len(resp.body))
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
	addr, _ := h2Serve(t, hs, HTTP2Options{})
	r := dialH2(t, addr)
	r.request(1, "GET", "/", true)
	resp := r.response(1, func(n int) uint32 { return uint32(n) })
	if !resp.rst || resp.ended {
		t.Fatalf("stream ended cleanly after %d of 500000 bytes", len(resp.body))
	}
	if resp.status != "200" || resp.header["content-length"] != "500000" {
		t.Errorf("head: %s %v", resp.status, resp.header)
	}
}

// TestHTTP2Malformed: requests HTTP/2 calls malformed are reset with
// PROTOCOL_ERROR and never reach a backend; the connection goes on.
func TestHTTP2Malformed(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, HTTP2Options{})
	r := dialH2(t, addr)
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
		r.request(id, c.method, c.path, true, c.fields...)
		resp := r.response(id, nil)
		if !resp.rst || resp.reset != http2.ErrCodeProtocol {
			t.Errorf("%s: status %q, reset %v %v; want PROTOCOL_ERROR", c.name, resp.status, resp.rst, resp.reset)
		}
		id += 2
	}
	// A body longer than its content-length.
	r.request(id, "POST", "/", false, "content-length", "3")
	r.fr.WriteData(id, true, []byte("12345"))
	if resp := r.response(id, nil); resp.reset != http2.ErrCodeProtocol {
		t.Errorf("body past content-length: %+v", resp)
	}
	id += 2
	if e.hits.Load() != 0 {
		t.Errorf("%d malformed requests reached the backend", e.hits.Load())
	}
	r.request(id, "GET", "/fine", true)
	if resp := r.response(id, nil); resp.status != "200" {
		t.Errorf("connection unusable after malformed requests: %+v", resp)
	}
}

// TestHTTP2ExpectContinue: a client that waits for 100 Continue gets it,
// and the backend gets the body without the Expect header.
func TestHTTP2ExpectContinue(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, HTTP2Options{})
	r := dialH2(t, addr)
	r.request(1, "PUT", "/up", false, "expect", "100-continue", "content-length", "5")
	for {
		f := r.next()
		if mh, ok := f.(*http2.MetaHeadersFrame); ok {
			if mh.Fields[0].Value != "100" {
				t.Fatalf("first answer %v, want 100", mh.Fields)
			}
			break
		}
	}
	r.fr.WriteData(1, true, []byte("hello"))
	resp := r.response(1, nil)
	s := decodeSeen(t, string(resp.body))
	if resp.status != "200" || s.Body != "hello" || s.Header.Get("Expect") != "" {
		t.Errorf("status %s, backend saw body %q, Expect %q", resp.status, s.Body, s.Header.Get("Expect"))
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

// TestHTTP2ResetAndRefuse: streams the client resets while their requests
// are served cost it nothing on the connection; past the stream limit new
// streams are refused (safe to retry), and the connection serves again
// once requests finish.
func TestHTTP2ResetAndRefuse(t *testing.T) {
	e, release := startSlowEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, responseTimeout: 10 * time.Second})
	addr, _ := h2Serve(t, hs, HTTP2Options{MaxStreams: 4})
	r := dialH2(t, addr)
	// Four requests held by the backend, reset by the client at once.
	for id := uint32(1); id <= 7; id += 2 {
		r.request(id, "GET", "/slow", true)
		r.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	// Their handlers still run: a fifth stream is refused.
	r.request(9, "GET", "/", true)
	if resp := r.response(9, nil); resp.reset != http2.ErrCodeRefusedStream {
		t.Errorf("stream over the limit: %+v, want REFUSED_STREAM", resp)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for id := uint32(11); ; id += 2 {
		r.request(id, "GET", "/", true)
		resp := r.response(id, nil)
		if resp.status == "200" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused after the slow requests ended: %+v", resp)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHTTP2GoAway: a graceful stop answers the streams already open,
// ignores newer ones and closes the connection; an idle connection closes
// after IdleTimeout with a GOAWAY.
func TestHTTP2GoAway(t *testing.T) {
	e, release := startSlowEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}, responseTimeout: 10 * time.Second})
	addr, a := h2Serve(t, hs, HTTP2Options{IdleTimeout: 300 * time.Millisecond})
	r := dialH2(t, addr)
	r.request(1, "GET", "/slow", true)
	for e.hits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	a.GoAway()
	var last uint32
	for {
		if ga, ok := r.next().(*http2.GoAwayFrame); ok {
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
	r.request(3, "GET", "/late", true) // past the last stream: ignored
	close(release)
	var status string
	for {
		f, err := r.fr.ReadFrame()
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
	addr2, _ := h2Serve(t, hs2, HTTP2Options{IdleTimeout: 300 * time.Millisecond})
	r2 := dialH2(t, addr2)
	r2.request(1, "GET", "/", true)
	if resp := r2.response(1, nil); resp.status != "200" {
		t.Fatalf("%+v", resp)
	}
	start := time.Now()
	for {
		f, err := r2.fr.ReadFrame()
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
	if _, err := r2.fr.ReadFrame(); err == nil {
		t.Error("connection open after the idle GOAWAY")
	}
}

// TestWorkerPoolReusesAndExpires: request goroutines are reused, and end
// after their idle time without work.
func TestWorkerPoolReusesAndExpires(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, a := h2Serve(t, hs, HTTP2Options{workerIdle: 100 * time.Millisecond})
	r := dialH2(t, addr)
	for i := range 20 {
		id := uint32(2*i + 1)
		r.request(id, "GET", "/"+strconv.Itoa(i), true)
		if resp := r.response(id, nil); resp.status != "200" {
			t.Fatalf("%+v", resp)
		}
	}
	// One worker serves them all, or two when the next request came in
	// before the first worker was back in the pool.
	if n := a.workers.Idle(); n < 1 || n > 2 {
		t.Errorf("%d idle workers after 20 requests one at a time, want 1 or 2", n)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		n := a.workers.Idle()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still idle", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHTTP2EarlyAnswerThenData: a request answered before its body
// arrived (413) is reset with NO_ERROR; the DATA the client had already
// sent is ignored, not answered with a reset each.
func TestHTTP2EarlyAnswerThenData(t *testing.T) {
	e := startEcho(t)
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	addr, _ := h2Serve(t, hs, HTTP2Options{MaxBody: 1 << 10})
	r := dialH2(t, addr)
	r.request(1, "POST", "/up", false, "content-length", "100000")
	resp := r.response(1, nil)
	if resp.status != "413" {
		t.Fatalf("status %q, want 413", resp.status)
	}
	chunk := make([]byte, 1000)
	for range 5 {
		r.fr.WriteData(1, false, chunk)
	}
	r.fr.WritePing(false, [8]byte{1})
	for {
		switch f := r.next().(type) {
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

// TestHPACKEncoding: header blocks lb writes decode, with x/net's
// decoder, to the fields meant, long values and unusual statuses
// included.
func TestHPACKEncoding(t *testing.T) {
	long := strings.Repeat("v", 300) // lengths past the 7-bit prefix
	for _, code := range []int{200, 204, 206, 304, 400, 404, 500, 201, 418, 599} {
		var resp fasthttp.Response
		resp.SetStatusCode(code)
		resp.Header.Set("X-Long", long)
		resp.Header.Set("Content-Type", "text/plain")
		resp.Header.Set("ETag", `"e"`)
		resp.Header.Set("Strict-Transport-Security", "max-age=1")
		c := &h2Conn{}
		block := c.encodeHead(&resp, 1234567)
		got := map[string]string{}
		if _, err := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got[f.Name] = f.Value }).Write(block); err != nil {
			t.Fatalf("%d: %v", code, err)
		}
		want := map[string]string{":status": strconv.Itoa(code), "x-long": long, "content-type": "text/plain", "content-length": "1234567",
			"etag": `"e"`, "strict-transport-security": "max-age=1"}
		if code == 204 || code == 304 {
			delete(want, "content-length")
		}
		if !maps.Equal(got, want) {
			t.Errorf("%d: decoded %v", code, got)
		}
	}
}
