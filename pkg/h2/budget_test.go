package h2

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/internal/testutil"
)

// uploader sends request bodies on a raw HTTP/2 connection as fast as
// lb's flow-control credit allows, never ending them.
type uploader struct {
	r *testutil.H2Client

	mu      sync.Mutex
	cond    sync.Cond
	connWin int64
	win     map[uint32]int64
	sent    int64
	resets  map[uint32]http2.ErrCode
	err     error
}

func newUploader(t *testing.T, addr string) *uploader {
	u := &uploader{r: testutil.DialH2(t, addr), connWin: 65535, win: map[uint32]int64{}, resets: map[uint32]http2.ErrCode{}}
	u.r.Conn.SetDeadline(time.Time{})
	u.cond.L = &u.mu
	go func() {
		for {
			f, err := u.r.Framer.ReadFrame()
			u.mu.Lock()
			if err != nil {
				u.err = err
				u.cond.Broadcast()
				u.mu.Unlock()
				return
			}
			switch f := f.(type) {
			case *http2.WindowUpdateFrame:
				if f.StreamID == 0 {
					u.connWin += int64(f.Increment)
				} else if _, ok := u.win[f.StreamID]; ok {
					u.win[f.StreamID] += int64(f.Increment)
				}
			case *http2.RSTStreamFrame:
				delete(u.win, f.StreamID)
				u.resets[f.StreamID] = f.ErrCode
			case *http2.PingFrame:
				if !f.IsAck() {
					u.r.Framer.WritePing(true, f.Data)
				}
			}
			u.cond.Broadcast()
			u.mu.Unlock()
		}
	}()
	return u
}

// upload opens streams first, first+2, ... and sends each up to perStream
// bytes, in the background, until the connection ends.
func (u *uploader) upload(first uint32, streams int, perStream int64) {
	ids := make([]uint32, streams)
	u.mu.Lock()
	for i := range ids {
		ids[i] = first + uint32(2*i)
		u.r.Request(ids[i], "POST", "/up", false)
		u.win[ids[i]] = streamWindow // lb's SETTINGS came before
	}
	u.mu.Unlock()
	chunk := make([]byte, 16<<10)
	go func() {
		sent := map[uint32]int64{}
		u.mu.Lock()
		defer u.mu.Unlock()
		for u.err == nil {
			progress := false
			for _, id := range ids {
				w, open := u.win[id]
				n := min(int64(len(chunk)), perStream-sent[id], u.connWin, w)
				if !open || n <= 0 {
					continue
				}
				u.connWin -= n
				u.win[id] -= n
				sent[id] += n
				u.sent += n
				u.r.Framer.WriteData(id, false, chunk[:n])
				progress = true
			}
			if !progress {
				u.cond.Wait()
			}
		}
	}()
}

// state is what the client has sent and the credit it has left.
func (u *uploader) state() (sent, credit int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.sent, u.connWin
}

// TestHTTP2ProcessBodyBudget: past the process's body budget a client
// gets no more credit, whatever its connection's own budget, and gets it
// as soon as another connection releases what it held.
func TestHTTP2ProcessBodyBudget(t *testing.T) {
	const limit = 16 << 20
	if n := bodymem.Used(); n != 0 {
		t.Fatalf("%d body bytes held before the test", n)
	}
	bodymem.SetLimit(limit)
	t.Cleanup(func() { bodymem.SetLimit(bodymem.DefaultLimit) })

	// Bodies of 1 MiB are buffered whole, not streamed: their requests
	// wait for the rest of them, holding what came.
	addr, _ := serveTest(t, answer(nil), Options{MaxBody: 1 << 20, BodyBuffer: 1 << 20, ReadTimeout: time.Minute, IdleTimeout: time.Minute})

	// poll waits for cond, checking all along that the process never
	// holds more than the limit.
	poll := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); {
			if n := bodymem.Used(); n > limit {
				t.Fatalf("the process holds %d body bytes, over its %d", n, limit)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s (held %d)", what, bodymem.Used())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	const each = 12 << 20 // within a connection's budget (16 MiB)

	// A sends 12 bodies of 1 MiB, never ended.
	a := newUploader(t, addr)
	a.upload(1, 12, 1<<20)
	poll("first connection holds its bodies", func() bool { return bodymem.Used() == each })

	// B gets only what is left in the process, and waits, though its
	// own budget has room.
	b := newUploader(t, addr)
	b.upload(1, 12, 1<<20)
	poll("second connection fills the process's budget", func() bool {
		sent, credit := b.state()
		return bodymem.Used() == limit && sent == limit-each && credit == 0
	})

	// A's client gives up its uploads: B is given credit at once, and
	// sends the rest.
	a.mu.Lock()
	for id := uint32(1); id < 24; id += 2 {
		a.r.Framer.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	a.mu.Unlock()
	poll("second connection resumes", func() bool {
		sent, _ := b.state()
		return sent == each && bodymem.Used() == each
	})
	b.mu.Lock()
	if len(b.resets) != 0 {
		t.Errorf("second connection's streams reset: %v", b.resets)
	}
	b.mu.Unlock()
}

// TestHTTP2ProcessBodyBudgetRefuses: credit a connection was given before
// the process ran out of room (every connection starts with some) is not
// held beyond the process's budget: those streams are refused, safe to
// retry, and nothing more is held.
func TestHTTP2ProcessBodyBudgetRefuses(t *testing.T) {
	budget := connBudget(1 << 20)
	if n := bodymem.Used(); n != 0 {
		t.Fatalf("%d body bytes held before the test", n)
	}
	bodymem.SetLimit(budget) // one connection's worth
	t.Cleanup(func() { bodymem.SetLimit(bodymem.DefaultLimit) })

	addr, _ := serveTest(t, answer(nil), Options{MaxBody: 1 << 20, BodyBuffer: 1 << 20, ReadTimeout: time.Minute, IdleTimeout: time.Minute})
	// A holds all but half a MiB of the process's budget (and less than
	// its own).
	a := newUploader(t, addr)
	a.upload(1, 31, 512<<10)
	for deadline := time.Now().Add(10 * time.Second); bodymem.Used() != budget-512<<10; {
		if time.Now().After(deadline) {
			t.Fatalf("first connection holds %d, want %d", bodymem.Used(), budget-512<<10)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// B was given its first MiB of credit as it connected.
	b := newUploader(t, addr)
	b.upload(1, 4, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if n := bodymem.Used(); n > budget {
			t.Fatalf("the process holds %d, over its %d", n, budget)
		}
		b.mu.Lock()
		refused := len(b.resets)
		b.mu.Unlock()
		if refused > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stream refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.mu.Lock()
	for id, code := range b.resets {
		if code != http2.ErrCodeRefusedStream {
			t.Errorf("stream %d reset with %v, want REFUSED_STREAM", id, code)
		}
	}
	b.mu.Unlock()
	if n := bodymem.Used(); n > budget {
		t.Errorf("the process holds %d, over its %d", n, budget)
	}
}

// TestHTTP2UploadsShareBudget: uploads on one connection that together
// pass its budget all go through, well within ReadTimeout. Buffered whole
// (body_buffer as large as they are): when none can finish, the newest is
// refused (REFUSED_STREAM) and Go's client sends it again once the others
// are in. Streamed: each holds at most its window, and none waits.
func TestHTTP2UploadsShareBudget(t *testing.T) {
	const size = 8 << 20 // max_request_body; the budget is twice that
	t.Run("whole", func(t *testing.T) { uploadsShareBudget(t, size, size) })
	t.Run("streamed", func(t *testing.T) { uploadsShareBudget(t, size, 0) })
}

func uploadsShareBudget(t *testing.T, size, bodyBuffer int) {
	count := answer(func(ctx *fasthttp.RequestCtx) {
		if !ctx.Request.IsBodyStream() {
			fmt.Fprint(ctx, len(ctx.Request.Body()))
			return
		}
		n, err := io.Copy(io.Discard, ctx.Request.BodyStream())
		if err != nil {
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
		}
		fmt.Fprint(ctx, n)
	})
	addr, _ := serveTest(t, count, Options{MaxBody: size, BodyBuffer: bodyBuffer, ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute})
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second}

	body := bytes.Repeat([]byte("x"), size)
	start := time.Now()
	var maxHeld atomic.Int64
	sampled := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := bodymem.Used(); n > maxHeld.Load() {
				maxHeld.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Post("https://"+addr+"/up", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(got) != strconv.Itoa(size) {
				errs <- fmt.Errorf("status %d, handler got %q bytes", resp.StatusCode, got)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("uploads took %s", d)
	}
	if limit := int64(4 * (streamWindow + frameSize)); bodyBuffer == 0 && maxHeld.Load() > limit {
		t.Errorf("four streamed uploads held %d body bytes, over their windows (%d)", maxHeld.Load(), limit)
	}
	// Released as each request's handler finishes, just after its answer.
	for deadline := time.Now().Add(5 * time.Second); bodymem.Used() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d body bytes still held", bodymem.Used())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
