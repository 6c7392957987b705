package h2

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/abort"
	"github.com/offloadlb/lb/internal/bodymem"
)

// bodiesHeldNone waits until no request-body bytes are held, as between
// tests, at most 5 s.
func bodiesHeldNone(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); bodymem.Used() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d request-body bytes still held", bodymem.Used())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// streamOf returns the streamed body of the request in ctx, or nil.
func streamOf(ctx *fasthttp.RequestCtx) *bodyReader {
	if !ctx.Request.IsBodyStream() {
		return nil
	}
	r, _ := ctx.Request.BodyStream().(*bodyReader)
	return r
}

// blocked waits until a Read of r waits for data, at most 5 s.
func blocked(r *bodyReader) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		r.c.mu.Lock()
		w := r.waiting
		r.c.mu.Unlock()
		if w {
			return true
		}
	}
	return false
}

// recv receives from ch, failing the test after 20 s.
func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatal("nothing came within 20s")
		var zero T
		return zero
	}
}

// readResult is how a handler's reading of a body ended.
type readResult struct {
	n   int64
	err error // nil for io.EOF
	at  time.Time
}

// pattern returns n bytes that are not all alike.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// stampedReader reads an endless body cheaply (the race detector slows a
// pseudo-random generator written in Go down): random bytes repeated
// every 64 KiB, each 4 KiB stamped with its offset, so that bytes out of
// order change the body's hash.
type stampedReader struct{ off int64 }

var stampBlock = func() []byte {
	b := make([]byte, 64<<10)
	rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}()

func (s *stampedReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		i := int(s.off % int64(len(stampBlock)))
		k := copy(p[n:], stampBlock[i:min(len(stampBlock), i+4<<10-i%(4<<10))])
		if s.off%(4<<10) == 0 && k >= 8 {
			binary.LittleEndian.PutUint64(p[n:], uint64(s.off))
		}
		n += k
		s.off += int64(k)
	}
	return n, nil
}

// countingReader counts what is read from it, and hashes it.
type countingReader struct {
	r    io.Reader
	n    *atomic.Int64
	hash io.Writer
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.hash.Write(p[:n])
	c.n.Add(int64(n))
	return n, err
}

// TestHTTP2StreamedBodyLarge: a 64 MiB body streams to a handler that
// reads it slowly: the handler has its first bytes while the client has
// most of it still to send, lb never holds more of it than the stream
// window and a frame, and it arrives intact.
func TestHTTP2StreamedBodyLarge(t *testing.T) {
	const size = 64 << 20
	bodiesHeldNone(t)
	var (
		clientRead  atomic.Int64 // what the client took from the body to send
		sentAtFirst atomic.Int64 // clientRead when the handler had its first bytes
		maxHeld     atomic.Int64
	)
	sentAtFirst.Store(-1)
	noteHeld := func() {
		for n := bodymem.Used(); n > maxHeld.Load(); {
			if maxHeld.CompareAndSwap(maxHeld.Load(), n) {
				return
			}
		}
	}
	h := answer(func(ctx *fasthttp.RequestCtx) {
		r := streamOf(ctx)
		if r == nil || ctx.Request.Header.ContentLength() != size {
			ctx.Error(fmt.Sprintf("stream %v, length %d", r != nil, ctx.Request.Header.ContentLength()), 500)
			return
		}
		sum := sha256.New()
		buf := make([]byte, 32<<10)
		var got int64
		for {
			n, err := r.Read(buf)
			if n > 0 && got == 0 {
				sentAtFirst.Store(clientRead.Load())
			}
			sum.Write(buf[:n])
			if (got/(16<<20) != (got+int64(n))/(16<<20) || got == 0) && got+int64(n) < size {
				// Slowly: at the start and every 16 MiB, it waits
				// until the client used up its window (all of it at
				// first; later, all but the credit for less than a
				// quarter window read, not given back yet).
				full := int64(streamWindow - 64<<10)
				if got > 0 {
					full -= streamWindow / 4
				}
				for deadline := time.Now().Add(5 * time.Second); bodymem.Used() < full && time.Now().Before(deadline); {
					noteHeld()
					time.Sleep(time.Millisecond)
				}
			}
			if got/(1<<20) != (got+int64(n))/(1<<20) {
				time.Sleep(time.Millisecond) // and 1 ms a MiB
			}
			got += int64(n)
			noteHeld()
			if err == io.EOF {
				break
			}
			if err != nil {
				ctx.Error(err.Error(), 500)
				return
			}
		}
		fmt.Fprintf(ctx, "%x", sum.Sum(nil))
	})
	addr, _ := serveTest(t, h, Options{MaxBody: 2 * size, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute})

	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
				noteHeld()
			}
		}
	}()

	client := h2Client(t)
	sum := sha256.New()
	body := &countingReader{r: io.LimitReader(&stampedReader{}, size), n: &clientRead, hash: sum}
	req, err := http.NewRequest("POST", "https://"+addr+"/up", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	close(done)
	<-sampled
	t.Logf("64 MiB in %s; held at most %d bytes; the handler's first bytes came with %d sent",
		time.Since(start).Round(time.Millisecond), maxHeld.Load(), sentAtFirst.Load())
	if want := hex.EncodeToString(sum.Sum(nil)); resp.StatusCode != 200 || string(got) != want {
		t.Fatalf("status %d, handler's hash %q, want %s", resp.StatusCode, got, want)
	}
	if n := sentAtFirst.Load(); n < 0 || n >= size/2 {
		t.Errorf("the handler had its first bytes after %d of %d were sent", n, size)
	}
	if n := maxHeld.Load(); n > streamWindow+frameSize || n < streamWindow-64<<10 {
		t.Errorf("lb held at most %d body bytes; want the stream window filled, and not past it and a frame (%d)", n, streamWindow+frameSize)
	}
	bodiesHeldNone(t)
}

// h2Client returns an HTTP/2-only client of serveTest's server.
func h2Client(t *testing.T) *http.Client {
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// countBody is a handler that answers with the length of the body it
// read (whole or streamed), or 400 if the reading failed.
func countBody(ctx *fasthttp.RequestCtx) {
	if r := streamOf(ctx); r != nil {
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			ctx.Error(err.Error(), fasthttp.StatusBadRequest)
			return
		}
		fmt.Fprint(ctx, n)
		return
	}
	fmt.Fprint(ctx, len(ctx.Request.Body()))
}

// TestHTTP2StreamedBodyStuckHandler: a handler that does not read its
// body stops its client once the stream window is used, and only that
// stream: the connection's other uploads go through meanwhile. Once it
// answers, what it held is released and the stream is reset (NO_ERROR).
func TestHTTP2StreamedBodyStuckHandler(t *testing.T) {
	bodiesHeldNone(t)
	release := make(chan struct{})
	h := answer(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/stuck" {
			select {
			case <-release:
			case <-time.After(30 * time.Second):
			}
			ctx.SetBodyString("done")
			return
		}
		countBody(ctx)
	})
	addr, _ := serveTest(t, h, Options{MaxBody: 16 << 20, ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	p := newPeer(t, addr)
	const stuckSize = 4 << 20
	p.open(1, "POST", "/stuck", false, "content-length", strconv.Itoa(stuckSize))
	stuckSent := p.sendAsync(1, pattern(stuckSize), frameSize, true)
	p.stalled(1, streamWindow)

	const size = 3 << 20
	body := pattern(size)
	var errs []<-chan error
	for id := uint32(3); id <= 7; id += 2 {
		p.open(id, "POST", "/count", false, "content-length", strconv.Itoa(size))
		errs = append(errs, p.sendAsync(id, body, frameSize, true))
	}
	for i, id := 0, uint32(3); id <= 7; i, id = i+1, id+2 {
		if err := recv(t, errs[i]); err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		if r := p.await(id); r.Status != "200" || string(r.Body) != strconv.Itoa(size) {
			t.Fatalf("stream %d: %s %q", id, r.Status, r.Body)
		}
	}
	if sent, updates, _ := p.counts(1); sent != streamWindow || updates != 0 {
		t.Errorf("the stuck stream sent %d bytes and got %d WINDOW_UPDATEs; want %d and none", sent, updates, streamWindow)
	}
	if n := bodymem.Used(); n != streamWindow {
		t.Errorf("%d body bytes held with the stuck stream's window full, want %d", n, streamWindow)
	}

	close(release)
	r := p.awaitReset(1)
	if r.Status != "200" || !r.RST || r.Reset != http2.ErrCodeNo {
		t.Errorf("stuck stream: %s, reset %v %v; want 200 then RST_STREAM NO_ERROR", r.Status, r.RST, r.Reset)
	}
	if err := recv(t, stuckSent); err == nil {
		t.Error("the stuck stream's body went through")
	}
	bodiesHeldNone(t)
}

// TestHTTP2StreamedBodyClientReset: a client that resets its stream
// mid-body, or whose connection ends, makes the handler's waiting Read
// fail at once, and fires the request's abort signal.
func TestHTTP2StreamedBodyClientReset(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(p *peer)
		want error
	}{
		{"reset", func(p *peer) { p.reset(1, http2.ErrCodeCancel) }, errBodyReset},
		{"connection closes", func(p *peer) { p.r.Conn.Close() }, errBodyClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bodiesHeldNone(t)
			results := make(chan readResult, 1)
			fired := make(chan bool, 1)
			readers := make(chan *bodyReader, 1)
			var got atomic.Int64
			h := answer(func(ctx *fasthttp.RequestCtx) {
				r := streamOf(ctx)
				readers <- r
				buf := make([]byte, 8<<10)
				for {
					n, err := r.Read(buf)
					got.Add(int64(n))
					if err != nil {
						results <- readResult{got.Load(), err, time.Now()}
						fired <- abort.From(ctx).Fired()
						return
					}
				}
			})
			addr, _ := serveTest(t, h, Options{ReadTimeout: 10 * time.Second})
			p := newPeer(t, addr)
			p.open(1, "POST", "/up", false)
			if err := p.send(1, pattern(100<<10), frameSize, false); err != nil {
				t.Fatal(err)
			}
			// Wait until the handler has read it all and waits.
			r := recv(t, readers)
			for deadline := time.Now().Add(5 * time.Second); got.Load() != 100<<10; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the handler read %d bytes of %d", got.Load(), 100<<10)
				}
			}
			if !blocked(r) {
				t.Fatal("the handler's Read never waited")
			}
			ended := time.Now()
			tc.end(p)
			select {
			case res := <-results:
				if d := res.at.Sub(ended); d > time.Second {
					t.Errorf("Read failed %s after the client went", d)
				}
				if res.err != tc.want || res.n != 100<<10 {
					t.Errorf("read %d bytes, then %v; want %v", res.n, res.err, tc.want)
				}
				if !recv(t, fired) {
					t.Error("the abort signal did not fire")
				}
			case <-time.After(time.Second):
				t.Fatal("the handler's Read still waits 1 s after the client went")
			}
			bodiesHeldNone(t)
		})
	}
}

// TestHTTP2StreamedBodyLengthMismatch: a streamed body longer than its
// content-length, or ended short of it, is malformed: the handler's Read
// fails and the stream is reset with PROTOCOL_ERROR.
func TestHTTP2StreamedBodyLengthMismatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		declared int
		sent     int
	}{
		{"longer", 100 << 10, 100<<10 + 10},
		{"shorter", 100 << 10, 90 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bodiesHeldNone(t)
			results := make(chan readResult, 1)
			h := answer(func(ctx *fasthttp.RequestCtx) {
				n, err := io.Copy(io.Discard, streamOf(ctx))
				results <- readResult{n: n, err: err}
			})
			addr, _ := serveTest(t, h, Options{ReadTimeout: 10 * time.Second})
			p := newPeer(t, addr)
			p.open(1, "POST", "/up", false, "content-length", strconv.Itoa(tc.declared))
			if err := p.send(1, pattern(tc.sent), frameSize, true); err != nil {
				t.Fatal(err)
			}
			if r := p.await(1); !r.RST || r.Reset != http2.ErrCodeProtocol || r.Status != "" {
				t.Errorf("stream: status %q, reset %v %v; want PROTOCOL_ERROR", r.Status, r.RST, r.Reset)
			}
			select {
			case res := <-results:
				if !errors.Is(res.err, errBodyLength) {
					t.Errorf("read %d bytes, then %v; want %v", res.n, res.err, errBodyLength)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the handler's reading did not end")
			}
			bodiesHeldNone(t)
		})
	}
}

// TestHTTP2StreamedBodyPastMaxBody: a streamed body without a
// content-length that passes MaxBody fails the handler's Read with
// ErrBodyTooLarge; the client gets the handler's 413 and, as it was
// still sending, RST_STREAM NO_ERROR, having sent no more than its
// window.
func TestHTTP2StreamedBodyPastMaxBody(t *testing.T) {
	bodiesHeldNone(t)
	const maxBody = 256 << 10
	results := make(chan readResult, 1)
	h := answer(func(ctx *fasthttp.RequestCtx) {
		n, err := io.Copy(io.Discard, streamOf(ctx))
		results <- readResult{n: n, err: err}
		if errors.Is(err, fasthttp.ErrBodyTooLarge) {
			ctx.SetStatusCode(fasthttp.StatusRequestEntityTooLarge)
		}
	})
	addr, _ := serveTest(t, h, Options{MaxBody: maxBody, ReadTimeout: 10 * time.Second})
	p := newPeer(t, addr)
	p.open(1, "POST", "/up", false)
	sent := p.sendAsync(1, pattern(4<<20), frameSize, true)
	res := recv(t, results)
	if res.err != ErrBodyTooLarge || !errors.Is(res.err, fasthttp.ErrBodyTooLarge) || res.n > maxBody {
		t.Errorf("read %d bytes, then %v; want at most %d, then ErrBodyTooLarge", res.n, res.err, maxBody)
	}
	r := p.awaitReset(1)
	if r.Status != "413" || !r.RST || r.Reset != http2.ErrCodeNo {
		t.Errorf("status %q, reset %v %v; want 413, then NO_ERROR", r.Status, r.RST, r.Reset)
	}
	if err := recv(t, sent); err == nil {
		t.Error("the whole body was sent")
	}
	if n, _, _ := p.counts(1); n > streamWindow {
		t.Errorf("the client sent %d bytes, past its window", n)
	}
	bodiesHeldNone(t)
}

// TestHTTP2StreamedBodyTinyFrames: a body sent in 1-byte DATA frames to
// a client whose own window is tiny (so the echoed answer goes out a few
// bytes at a time) goes through, in bounded time; a larger one in small
// frames gets its credit back in a few WINDOW_UPDATEs, not one per frame
// or per Read.
func TestHTTP2StreamedBodyTinyFrames(t *testing.T) {
	bodiesHeldNone(t)
	h := answer(func(ctx *fasthttp.RequestCtx) {
		r := streamOf(ctx)
		if r == nil {
			ctx.Error("not streamed", 500)
			return
		}
		if string(ctx.Path()) == "/count" {
			// Small reads: each gives credit back, batched.
			n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, make([]byte, 1000))
			if err != nil {
				ctx.Error(err.Error(), 400)
			}
			fmt.Fprint(ctx, n)
			return
		}
		b, err := io.ReadAll(r)
		if err != nil {
			ctx.Error(err.Error(), 400)
			return
		}
		ctx.SetBody(b)
	})
	addr, _ := serveTest(t, h, Options{BodyBuffer: 1 << 10, MaxBody: 64 << 20, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	p := newPeer(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16})

	start := time.Now()
	body := pattern(16 << 10)
	p.open(1, "POST", "/echo", false)
	if err := p.send(1, body, 1, true); err != nil {
		t.Fatal(err)
	}
	r := p.await(1)
	if r.Status != "200" || !bytes.Equal(r.Body, body) {
		t.Fatalf("status %s, %d bytes echoed (equal %v)", r.Status, len(r.Body), bytes.Equal(r.Body, body))
	}
	t.Logf("16 KiB in 1-byte frames, echoed through a 16-byte window: %s", time.Since(start).Round(time.Millisecond))

	const size = 8 << 20
	p.open(3, "POST", "/count", false)
	if err := p.send(3, pattern(size), 1000, true); err != nil {
		t.Fatal(err)
	}
	if r := p.await(3); r.Status != "200" || string(r.Body) != strconv.Itoa(size) {
		t.Fatalf("status %s, %q", r.Status, r.Body)
	}
	_, updates, connUpdates := p.counts(3)
	t.Logf("8 MiB in 1000-byte frames: %d stream and %d connection WINDOW_UPDATEs", updates, connUpdates)
	if updates > size/(streamWindow/4)+1 || connUpdates > size/(connWindow/2)+4 {
		t.Errorf("%d WINDOW_UPDATEs for the stream, %d for the connection: credit not batched", updates, connUpdates)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %s", d)
	}
	bodiesHeldNone(t)
}

// TestHTTP2StreamedBodyInactivity: ReadTimeout limits each wait of a
// streamed body's reader for data (ErrBodyTimeout, a timeout net.Error),
// not the whole body: one that keeps coming, however slowly overall,
// goes through. A body read whole still gets 408 when it is not in
// within ReadTimeout.
func TestHTTP2StreamedBodyInactivity(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	results := make(chan readResult, 1)
	var waitFrom atomic.Int64
	h := answer(func(ctx *fasthttp.RequestCtx) {
		r := streamOf(ctx)
		if r == nil {
			countBody(ctx)
			return
		}
		var got int64
		buf := make([]byte, 32<<10)
		for {
			waitFrom.Store(time.Now().UnixNano())
			n, err := r.Read(buf)
			got += int64(n)
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				results <- readResult{got, err, time.Now()}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					ctx.SetStatusCode(fasthttp.StatusRequestTimeout)
				}
				fmt.Fprint(ctx, got)
				return
			}
		}
	})
	addr, _ := serveTest(t, h, Options{ReadTimeout: readTimeout, IdleTimeout: time.Minute})

	t.Run("client stops", func(t *testing.T) {
		p := newPeer(t, addr)
		p.open(1, "POST", "/up", false)
		if err := p.send(1, pattern(100<<10), frameSize, false); err != nil {
			t.Fatal(err)
		}
		res := recv(t, results)
		waited := res.at.Sub(time.Unix(0, waitFrom.Load()))
		var te interface{ Timeout() bool }
		if res.err != ErrBodyTimeout || !errors.As(res.err, &te) || !te.Timeout() || res.n != 100<<10 {
			t.Errorf("read %d bytes, then %v; want all, then ErrBodyTimeout", res.n, res.err)
		}
		if waited < readTimeout-20*time.Millisecond || waited > readTimeout+2*time.Second {
			t.Errorf("Read waited %s, want about %s", waited, readTimeout)
		}
		if r := p.awaitReset(1); r.Status != "408" || !r.RST || r.Reset != http2.ErrCodeNo {
			t.Errorf("status %q, reset %v %v; want 408, then NO_ERROR", r.Status, r.RST, r.Reset)
		}
	})
	t.Run("client keeps sending", func(t *testing.T) {
		const pieces, piece = 12, 8 << 10 // 96 KiB over 1.2 s, four times ReadTimeout
		p := newPeer(t, addr)
		p.open(1, "POST", "/up", false, "content-length", strconv.Itoa(pieces*piece))
		start := time.Now()
		for i := range pieces {
			if err := p.send(1, pattern(piece), frameSize, i == pieces-1); err != nil {
				t.Fatal(err)
			}
			time.Sleep(readTimeout / 3)
		}
		res := recv(t, results)
		if res.err != nil || res.n != pieces*piece {
			t.Errorf("read %d bytes, then %v", res.n, res.err)
		}
		if r := p.await(1); r.Status != "200" {
			t.Errorf("status %q after %s", r.Status, time.Since(start))
		}
	})
	t.Run("whole body not in", func(t *testing.T) {
		p := newPeer(t, addr)
		p.open(1, "POST", "/up", false)
		start := time.Now()
		if err := p.send(1, pattern(1<<10), frameSize, false); err != nil {
			t.Fatal(err)
		}
		r := p.await(1)
		if d := time.Since(start); r.Status != "408" || d < readTimeout-20*time.Millisecond {
			t.Errorf("status %q after %s; want 408 after %s", r.Status, d, readTimeout)
		}
	})
	bodiesHeldNone(t)
}

// TestHTTP2RequestTrailers: trailers after a body are in the request's
// header as fasthttp's trailers, before the handler runs for a body read
// whole, once the reader returned io.EOF for one that streams; names
// that cannot be trailers are left out. A pseudo-field in trailers resets
// the stream (PROTOCOL_ERROR).
func TestHTTP2RequestTrailers(t *testing.T) {
	h := answer(func(ctx *fasthttp.RequestCtx) {
		var n int
		if r := streamOf(ctx); r != nil {
			if len(ctx.Request.Header.PeekTrailerKeys()) != 0 {
				ctx.Error("trailers before the body was read", 500)
				return
			}
			b, err := io.ReadAll(r)
			if err != nil {
				ctx.Error(err.Error(), 400)
				return
			}
			n = len(b)
		} else {
			n = len(ctx.Request.Body())
		}
		fmt.Fprintf(ctx, "%d %q %q %q %q", n, ctx.Request.Header.Peek("X-Checksum"), ctx.Request.Header.Peek("X-Count"),
			ctx.Request.Header.ContentType(), ctx.Request.Header.PeekTrailerKeys())
	})
	addr, _ := serveTest(t, h, Options{MaxBody: 1 << 20, ReadTimeout: 10 * time.Second})
	p := newPeer(t, addr)
	trailers := []string{"x-checksum", "abc", "x-count", "2", "content-type", "evil/trailer", "host", "evil.example"}
	for i, size := range []int{5, 200 << 10} {
		id := uint32(2*i + 1)
		t.Run(fmt.Sprintf("%d bytes", size), func(t *testing.T) {
			p.open(id, "POST", "/up", false, "content-type", "text/plain")
			if err := p.send(id, pattern(size), frameSize, false); err != nil {
				t.Fatal(err)
			}
			p.trailers(id, trailers...)
			r := p.await(id)
			want := fmt.Sprintf(`%d "abc" "2" "text/plain" ["X-Checksum" "X-Count"]`, size)
			if r.Status != "200" || string(r.Body) != want {
				t.Errorf("status %s, handler saw %s; want %s", r.Status, r.Body, want)
			}
		})
	}
	t.Run("pseudo-field", func(t *testing.T) {
		p.open(5, "POST", "/up", false)
		if err := p.send(5, pattern(100<<10), frameSize, false); err != nil {
			t.Fatal(err)
		}
		p.trailers(5, ":path", "/other", "x-checksum", "abc")
		if r := p.await(5); !r.RST || r.Reset != http2.ErrCodeProtocol {
			t.Errorf("status %q, reset %v %v; want PROTOCOL_ERROR", r.Status, r.RST, r.Reset)
		}
	})
	bodiesHeldNone(t)
}

// TestHTTP2StreamedBodyInterrupt: Interrupt, from another goroutine than
// the one reading, wakes a Read waiting for data, and fails every Read
// after; the handler answers, and the client still sending is reset
// (NO_ERROR).
func TestHTTP2StreamedBodyInterrupt(t *testing.T) {
	bodiesHeldNone(t)
	results := make(chan readResult, 2)
	took := make(chan time.Duration, 1)
	h := answer(func(ctx *fasthttp.RequestCtx) {
		r := streamOf(ctx)
		read := make(chan readResult, 1)
		var got atomic.Int64
		go func() { // the reading goroutine is not the handler's
			buf := make([]byte, 8<<10)
			for {
				n, err := r.Read(buf)
				got.Add(int64(n))
				if err != nil {
					read <- readResult{got.Load(), err, time.Now()}
					return
				}
			}
		}()
		for deadline := time.Now().Add(5 * time.Second); got.Load() != 100<<10 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if !blocked(r) {
			ctx.Error("Read never waited", 500)
			return
		}
		interrupted := time.Now()
		r.Interrupt()
		res := <-read
		took <- res.at.Sub(interrupted)
		results <- res
		_, err := r.Read(make([]byte, 10))
		results <- readResult{err: err}
		ctx.SetBodyString("early")
	})
	addr, _ := serveTest(t, h, Options{ReadTimeout: 10 * time.Second})
	p := newPeer(t, addr)
	p.open(1, "POST", "/up", false, "content-length", strconv.Itoa(1<<20))
	if err := p.send(1, pattern(100<<10), frameSize, false); err != nil {
		t.Fatal(err)
	}
	r := p.awaitReset(1)
	if r.Status != "200" || string(r.Body) != "early" || !r.RST || r.Reset != http2.ErrCodeNo {
		t.Errorf("status %q %q, reset %v %v; want 200, then NO_ERROR", r.Status, r.Body, r.RST, r.Reset)
	}
	first, second := recv(t, results), recv(t, results)
	if !errors.Is(first.err, errBodyInterrupted) || first.n != 100<<10 {
		t.Errorf("read %d bytes, then %v", first.n, first.err)
	}
	if d := recv(t, took); d > time.Second {
		t.Errorf("the waiting Read returned %s after Interrupt", d)
	}
	if second.err == nil || second.err == io.EOF {
		t.Errorf("Read after Interrupt: %v", second.err)
	}
	bodiesHeldNone(t)
}

// TestHTTP2ExpectContinueStreams: a request with "expect: 100-continue"
// is served at once (its client waits for 100 before it sends the body),
// its body streaming.
func TestHTTP2ExpectContinueStreams(t *testing.T) {
	started := make(chan bool, 1)
	h := answer(func(ctx *fasthttp.RequestCtx) {
		started <- ctx.Request.IsBodyStream()
		b, err := io.ReadAll(ctx.Request.BodyStream())
		if err != nil {
			ctx.Error(err.Error(), 400)
			return
		}
		ctx.SetBody(b)
	})
	addr, _ := serveTest(t, h, Options{ReadTimeout: 10 * time.Second})
	p := newPeer(t, addr)
	p.open(1, "PUT", "/up", false, "expect", "100-continue", "content-length", "5")
	select {
	case streamed := <-started:
		if !streamed {
			t.Fatal("the body does not stream")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler did not start before the body")
	}
	if err := p.send(1, []byte("hello"), frameSize, true); err != nil {
		t.Fatal(err)
	}
	if r := p.await(1); r.Status != "200" || string(r.Body) != "hello" || r.Header["interim"] != "100" {
		t.Errorf("%+v", r)
	}
}

// TestStreamedBodyAllocatesNothing: taking in DATA frames for a streamed
// body (a full one and small ones) and reading them out allocates nothing
// once the chunk pool has what it needs, credit given back included.
func TestStreamedBodyAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	bodiesHeldNone(t)
	s := NewServer(answer(nil), Options{MaxHead: 8192, ReadTimeout: time.Minute})
	a, b := net.Pipe()
	go io.Copy(io.Discard, b) // lb's WINDOW_UPDATEs
	c := newConn(s, a)
	ctx := s.ctxs.Get().(*fasthttp.RequestCtx)
	ctx.Init2(a, quietLogger{}, false)
	st := &stream{id: 1, ctx: ctx, declared: -1, recvWin: streamWindow, served: true}
	c.mu.Lock()
	c.streams[1], c.maxClientID = st, 1
	c.streamBody(st)
	c.mu.Unlock()
	t.Cleanup(func() {
		c.mu.Lock()
		c.failBody(st, errBodyDone)
		c.closed = true
		c.mu.Unlock()
		a.Close()
		b.Close()
	})

	var wire bytes.Buffer
	fw := http2.NewFramer(&wire, nil)
	_ = fw.WriteData(1, false, make([]byte, frameSize))
	for range 16 {
		_ = fw.WriteData(1, false, []byte{1})
	}
	src := bytes.NewReader(nil)
	fr := http2.NewFramer(nil, src)
	fr.SetReuseFrames()
	buf := make([]byte, 8<<10)
	round := func() {
		src.Reset(wire.Bytes())
		for {
			f, err := fr.ReadFrame()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := c.onData(f.(*http2.DataFrame)); err != nil {
				t.Fatal(err)
			}
		}
		for want := frameSize + 16; want > 0; {
			n, err := st.body.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			want -= n
		}
	}
	for range 200 {
		round()
	}
	if got := testing.AllocsPerRun(500, round); got != 0 {
		t.Errorf("%v allocations per 17 DATA frames taken in and read", got)
	}
}
