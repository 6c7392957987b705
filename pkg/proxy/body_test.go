package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// bodyCtx is a request whose body is a stream of body, declared as cl
// bytes (-1: chunked), as the front ends hand it over.
func bodyCtx(body string, cl int) *fasthttp.RequestCtx {
	ctx := &fasthttp.RequestCtx{}
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetBodyStream(strings.NewReader(body), cl)
	return ctx
}

func TestTakeBody(t *testing.T) {
	site := &Site{BodyBuffer: 1024, MaxBody: 4096}
	small, large := strings.Repeat("s", 1000), strings.Repeat("l", 3000)
	cases := []struct {
		name    string
		body    string
		cl      int
		code    int
		streams bool
	}{
		{"within the buffer", small, len(small), 0, false},
		{"within the buffer, chunked", small, -1, 0, false},
		{"past the buffer", large, len(large), 0, true},
		{"past the buffer, chunked", large, -1, 0, true},
		{"declared past max_request_body", strings.Repeat("x", 5000), 5000, 413, false},
		{"cut short", small[:10], len(small), statusClientClosed, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := bodyCtx(c.body, c.cl)
			cb, code := takeBody(ctx, site, true)
			if code != c.code {
				t.Fatalf("status %d, want %d", code, c.code)
			}
			if code != 0 {
				return
			}
			defer cb.release()
			if cb.streams() != c.streams {
				t.Fatalf("streams %v, want %v", cb.streams(), c.streams)
			}
			if cb.streams() && c.cl >= 0 && len(cb.ahead) != 0 {
				t.Errorf("a body declared longer than the buffer was read ahead (%d bytes)", len(cb.ahead))
			}
			var got []byte
			if cb.streams() {
				b, err := io.ReadAll(cb)
				if err != nil {
					t.Fatal(err)
				}
				got = b
			} else {
				got = ctx.Request.Body()
			}
			if string(got) != c.body {
				t.Errorf("body of %d bytes, want %d", len(got), len(c.body))
			}
		})
	}
	if n := bodymem.Used(); n != 0 {
		t.Errorf("%d bytes still counted in the body memory", n)
	}
}

// TestTakeBodyLimits: a chunked body past max_request_body fails where it
// passes it; with no room left in the process's body memory, a body streams from
// its first byte.
func TestTakeBodyLimits(t *testing.T) {
	site := &Site{BodyBuffer: 1024, MaxBody: 4096}
	ctx := bodyCtx(strings.Repeat("x", 5000), -1)
	cb, code := takeBody(ctx, site, true)
	if code != 0 || !cb.streams() {
		t.Fatalf("status %d, streams %v", code, cb.streams())
	}
	if _, err := io.ReadAll(cb); err == nil || bodyStatus(err) != 413 {
		t.Errorf("reading past max_request_body: %v (status %d), want 413", err, bodyStatus(err))
	}
	cb.release()

	site.MaxBody = 100 // below the buffer: found in the read-ahead
	if _, code := takeBody(bodyCtx(strings.Repeat("x", 500), -1), site, true); code != 413 {
		t.Errorf("chunked body past a small max_request_body: %d, want 413", code)
	}
	site.MaxBody = 0

	bodymem.SetLimit(0)
	defer bodymem.SetLimit(bodymem.DefaultLimit)
	ctx = bodyCtx("tiny", 4)
	cb, code = takeBody(ctx, site, true)
	if code != 0 || !cb.streams() || len(cb.ahead) != 0 {
		t.Fatalf("with no read-ahead left: status %d, streams %v, %d bytes ahead", code, cb.streams(), len(cb.ahead))
	}
	if b, _ := io.ReadAll(cb); string(b) != "tiny" {
		t.Errorf("streamed %q", b)
	}
	cb.release()
}

// TestTakeBodyAllocatesNothing: a small body read whole costs no
// allocation once the pools are warm.
func TestTakeBodyAllocatesNothing(t *testing.T) {
	site := &Site{}
	body := bytes.Repeat([]byte("a"), 2000)
	r := bytes.NewReader(body)
	ctx := &fasthttp.RequestCtx{}
	allocs := testing.AllocsPerRun(200, func() {
		r.Reset(body)
		ctx.Request.SetBodyStream(r, len(body))
		cb, code := takeBody(ctx, site, true)
		if code != 0 || cb.streams() {
			t.Fatal("not taken whole")
		}
		ctx.Request.ResetBody()
		cb.release()
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per body", allocs)
	}
}

// TestResponsesWithinBodyMemory: a response body read whole is held until
// its client has it, counted in the process's body memory; with clients
// that do not read, what does not fit streams instead, the count never
// passes the limit, every answer arrives intact once they read, and
// nothing is left counted after.
func TestResponsesWithinBodyMemory(t *testing.T) {
	const size, clients, pipelined, limit = 60 << 10, 8, 8, 256 << 10
	page := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	e := startEcho(t, func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", strconv.Itoa(len(page)))
		w.Write(page)
		return true
	})
	hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
	before, full := bodymem.Used(), bodymem.Full()
	bodymem.SetLimit(before + limit)
	defer bodymem.SetLimit(bodymem.DefaultLimit)

	// In-memory connections take a few writes and then block, as a
	// socket whose buffers are full.
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := hs.ln.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, strings.Repeat("GET /page HTTP/1.1\r\nHost: lb.test\r\n\r\n", pipelined)); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	// Until every connection is blocked on a write: no more requests
	// reach the backend.
	var peak int64
	for last, still := int64(-1), time.Now(); time.Since(still) < 200*time.Millisecond; time.Sleep(time.Millisecond) {
		peak = max(peak, bodymem.Used()-before)
		if n := e.hits.Load(); n != last {
			last, still = n, time.Now()
		}
	}
	t.Logf("%d of %d answers fetched while no client reads; body memory peaked at %d KiB", e.hits.Load(), clients*pipelined, peak>>10)
	if peak > limit || peak < size {
		t.Errorf("body memory peaked at %d bytes, want at least one body's, within the %d limit", peak, limit)
	}
	if bodymem.Full() == full {
		t.Errorf("%d connections not reading: the body memory never filled (peak %d)", clients, peak)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for j := range pipelined {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("client %d, answer %d: %v", i, j, err)
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(b, page) {
				t.Errorf("client %d, answer %d: %d bytes (%v), not the page", i, j, len(b), err)
			}
		}
		c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); bodymem.Used() != before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still counted once every answer was read", bodymem.Used()-before)
		}
	}
}

// readNext reads cb to its end through Next, as the pump sends it.
func readNext(cb *clientBody) ([]byte, error) {
	var got []byte
	for {
		p, err := cb.Next()
		got = append(got, p...)
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// TestClientBodyNext: a streamed body read through Next, as the pump
// sends it, is the body the client sent: from fasthttp's stream of an
// HTTP/1.1 connection (whose Next gives out its read buffer), of known
// length or chunked in pieces of every size, past the read-ahead or
// streamed from its first byte; and from a stream without Next (HTTP/2).
func TestClientBodyNext(t *testing.T) {
	body := make([]byte, 200<<10)
	for i := range body {
		body[i] = byte(i * 7 / 5)
	}
	chunked := func() string {
		var b strings.Builder
		for off, n := 0, 1; off < len(body); n = n*3 + 1 {
			n = min(n%40000+1, len(body)-off)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, body[off:off+n])
			off += n
		}
		b.WriteString("0\r\n\r\n")
		return b.String()
	}()
	cases := []struct {
		name, framing, body string
	}{
		{"known length", fmt.Sprintf("Content-Length: %d\r\n", len(body)), string(body)},
		{"chunked", "Transfer-Encoding: chunked\r\n", chunked},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			site := &Site{BodyBuffer: 1024}
			result := make(chan error, 1)
			srv := &fasthttp.Server{
				StreamRequestBody:  true,
				MaxRequestBodySize: site.BodyBuffer,
				ReduceMemoryUsage:  true,
				Handler: func(ctx *fasthttp.RequestCtx) {
					cb, code := takeBody(ctx, site, false)
					if code != 0 || !cb.streams() {
						result <- fmt.Errorf("status %d, streams %v", code, cb.streams())
						return
					}
					defer cb.release()
					if cb.next == nil {
						result <- errors.New("fasthttp's stream has no Next")
						return
					}
					got, err := readNext(cb)
					switch {
					case err != nil:
						result <- err
					case !bytes.Equal(got, body):
						result <- fmt.Errorf("%d bytes through Next, not the %d sent", len(got), len(body))
					default:
						result <- nil
					}
				},
			}
			ln := fasthttputil.NewInmemoryListener()
			go srv.Serve(ln) // ends when ln closes
			defer ln.Close()
			conn, err := ln.Dial()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			go io.WriteString(conn, "POST / HTTP/1.1\r\nHost: a\r\n"+c.framing+"\r\n"+c.body) // the handler says how it went
			if err := <-result; err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("without Next", func(t *testing.T) {
		cb, code := takeBody(bodyCtx(string(body), -1), &Site{BodyBuffer: 1024}, true)
		if code != 0 || !cb.streams() || cb.next != nil {
			t.Fatalf("status %d, streams %v, next %v", code, cb.streams(), cb.next)
		}
		defer cb.release()
		got, err := readNext(cb)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%d bytes through Next (%v), not the %d sent", len(got), err, len(body))
		}
	})
}
