package h2

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/offloadlb/lb/internal/abort"
	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
)

// Flow-control windows lb offers a client for request bodies.
//
// A body that streams (body.go) gets stream credit back as the handler
// reads it, a quarter window at a time: streamWindow is what it may hold
// unread in lb, and what its client may have in flight, so an upload
// moves at most streamWindow per round trip. 1 MiB (Go's server offers
// the same) keeps an upload at 20 MB/s over a 50 ms round trip, where a
// smaller window would slow every large upload for memory the budgets
// bound anyway: what many such streams hold together is bounded by the
// connection's and the process's budgets, not by this window. A body
// buffered whole (at most Options.BodyBuffer) gets stream credit back as
// data arrives, half a window at a time.
//
// Connection credit is given as the body budgets allow (budget.go): up to
// connWindow at once, while what the connection holds, read or not,
// leaves room in its budget (16 MiB or more). A stream whose handler
// stops reading holds at most streamWindow of it, so the connection's
// other streams go on.
const (
	streamWindow = 1 << 20
	connWindow   = 1 << 20
	// frameSize is the largest frame lb reads and writes: the
	// protocol's default, so a peer cannot make lb buffer a 16 MiB frame
	// before it can look at it.
	frameSize = 16 << 10
	// maxSettings bounds the parameters in one SETTINGS frame.
	maxSettings = 64
)

// conn is one HTTP/2 client connection. Its reader goroutine (serve)
// reads and acts on every frame; a request runs on a worker of the
// Server's pool once its last frame is in, or once its body streams.
// Protocol state, the HPACK encoder, streamed bodies and all frame writes
// are under mu; writes go to a coalescingConn, so the responses of many
// streams leave in one TLS record.
type conn struct {
	srv *Server
	nc  net.Conn // the client's, handed to the Handler as the request's
	w   *coalescingConn
	fr  *http2.Framer
	hb  *headBlock // the reader's HPACK decoder and request head

	mu          sync.Mutex
	cond        sync.Cond // flow-control credit arrived, or a stream ended
	streams     map[uint32]*stream
	maxClientID uint32 // highest stream the client opened
	handlers    int    // requests being served
	unserved    int    // streams whose request is still coming in
	wg          sync.WaitGroup
	hbuf        []byte // a header block being written
	scratch     []byte
	sendWin     int64 // connection-level credit for DATA to the client
	initWin     int64 // the client's SETTINGS_INITIAL_WINDOW_SIZE
	recvWin     int64 // credit the client has for DATA to lb
	budget      int64 // connBudget: request-body bytes it may hold
	held        int64 // request-body bytes held for its streams
	waiting     bool  // on bodies' list, for room in the process
	timer       *time.Timer
	timerAt     time.Time // when timer fires; zero when it is not set
	resetByUs   [8]uint32 // the streams lb reset last
	resetNext   uint8
	sentGoAway  bool
	peerGoAway  bool
	closed      bool
	deadline    int // deadline* below: which read deadline is set
}

const (
	deadlineNone = iota
	deadlineIdle
)

// stream is one request. Its fields are under the connection's mu.
type stream struct {
	id       uint32
	ctx      *fasthttp.RequestCtx
	err      error // answer with Handler.ServeError instead of serving
	declared int64 // content-length, -1 if none
	got      int64 // body bytes received
	held     int64 // of them, counted in the budgets
	sendWin  int64
	recvWin  int64
	unacked  int64
	// expires is when the request must be in whole (ReadTimeout after
	// its head); zero once served, or without ReadTimeout.
	expires time.Time

	// body is the request body being read by the handler, when it
	// streams; nil when it is read whole.
	body *bodyReader

	served     bool // its handler started
	remoteDone bool // the client ended the stream
	localDone  bool // lb ended the stream
	reset      bool // reset by either side: nothing more is written

	// abort cuts the request's backend exchange when the client resets
	// the stream or the connection ends while it is served.
	abort abort.Signal
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:     s,
		nc:      nc,
		w:       newCoalescingConn(nc, s.o.WriteTimeout),
		streams: map[uint32]*stream{},
		sendWin: 65535,
		initWin: 65535,
		recvWin: connWindow,
		budget:  connBudget(s.o.MaxBody),
	}
	c.cond.L = &c.mu
	c.fr = http2.NewFramer(c.w, nc)
	c.fr.SetMaxReadFrameSize(frameSize)
	c.fr.SetReuseFrames()
	c.fr.MaxHeaderListSize = headerListSize(s.o.MaxHead)
	c.hb = newHeadBlock(c.fr.MaxHeaderListSize)
	return c
}

// headerListSize is the largest header list lb decodes, in HPACK's
// measure (32 bytes per field on top of names and values). Heads between
// maxHead (as HTTP/1.1) and this are decoded whole and answered 431, as on
// HTTP/1.1; clients are told not to send more, which would end the
// connection.
func headerListSize(maxHead int) uint32 { return uint32(2*maxHead + 4096) }

// errClosing stops the reader when the connection is done with.
var errClosing = errors.New("connection done")

// serve runs the connection until it ends, then waits for the requests it
// started.
func (c *conn) serve() {
	defer func() {
		c.mu.Lock()
		c.closed = true
		c.cond.Broadcast()
		if c.timer != nil {
			c.timer.Stop()
		}
		for _, st := range c.streams {
			switch {
			case !st.served:
				c.release(st)
			case st.ctx != nil:
				st.abort.Fire() // its answer has nowhere to go
				if st.body != nil {
					c.failBody(st, errBodyClosed)
				}
			}
		}
		c.mu.Unlock()
		c.w.Close()
		c.wg.Wait()
	}()
	c.mu.Lock()
	_ = c.fr.WriteSettings( // write errors show on the next read
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.o.MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.fr.MaxHeaderListSize},
	)
	_ = c.fr.WriteWindowUpdate(0, connWindow-65535) // write errors show on the next read
	c.mu.Unlock()

	wait := c.srv.o.ReadTimeout
	if wait == 0 {
		wait = c.srv.o.IdleTimeout
	}
	if wait > 0 {
		_ = c.nc.SetReadDeadline(time.Now().Add(wait)) // fails only on a closed connection, which the read reports
	}
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.nc, preface[:]); err != nil || string(preface[:]) != http2.ClientPreface {
		return
	}
	c.mu.Lock()
	c.setDeadline()
	c.mu.Unlock()
	for first := true; ; first = false {
		f, err := c.fr.ReadFrame()
		if err == nil {
			if _, ok := f.(*http2.SettingsFrame); first && !ok {
				// The preface ends with a SETTINGS frame (RFC 9113 3.4).
				err = http2.ConnectionError(http2.ErrCodeProtocol)
			} else {
				err = c.handle(f)
			}
		}
		if err != nil && !c.fail(err) {
			return
		}
	}
}

// fail answers a protocol error: a stream error resets the stream and the
// connection goes on (true); a connection error sends GOAWAY and ends it.
func (c *conn) fail(err error) bool {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		c.mu.Lock()
		if se.StreamID > c.maxClientID && se.StreamID%2 == 1 && se.Code == http2.ErrCodeProtocol {
			c.maxClientID = se.StreamID // a malformed request used the id up
		}
		c.resetLocked(se.StreamID, se.Code)
		c.setDeadline()
		c.mu.Unlock()
		return true
	case errors.As(err, &ce):
		c.goAwayLocking(http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAwayLocking(http2.ErrCodeFrameSize)
	case errors.Is(err, errClosing):
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.goAwayLocking(http2.ErrCodeNo)
		}
	}
	return false
}

func (c *conn) goAwayLocking(code http2.ErrCode) {
	c.mu.Lock()
	if !c.closed {
		_ = c.fr.WriteGoAway(c.maxClientID, code, nil) // the connection is ending either way
		c.sentGoAway = true
	}
	c.mu.Unlock()
}

// goAway starts a graceful stop of this connection (Server.GoAway).
func (c *conn) goAway() {
	c.mu.Lock()
	if !c.sentGoAway && !c.closed {
		_ = c.fr.WriteGoAway(c.maxClientID, http2.ErrCodeNo, nil) // the connection is ending either way
		c.sentGoAway = true
	}
	quiet := c.quiet()
	c.mu.Unlock()
	if quiet {
		// The reader sees it and returns. Not waited for: closing
		// flushes the GOAWAY, which a client that does not read could
		// hold up for closeFlushWait.
		go c.w.Close()
	}
}

// quiet: no stream is open and no request is being served.
func (c *conn) quiet() bool { return len(c.streams) == 0 && c.handlers == 0 }

// setDeadline sets the read deadline for what the connection waits for:
// the next request (IdleTimeout), or frames that may never come while
// requests are served or coming in (none: each request has ReadTimeout
// for its head and body, see expire, which frames on the connection do
// not extend).
func (c *conn) setDeadline() {
	want, d := deadlineNone, time.Duration(0)
	if c.quiet() {
		want, d = deadlineIdle, c.srv.o.IdleTimeout
	}
	if want == c.deadline {
		return
	}
	c.deadline = want
	var t time.Time
	if d > 0 {
		t = time.Now().Add(d)
	}
	_ = c.nc.SetReadDeadline(t) // fails only on a closed connection, which the next read reports
}

func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		defer c.mu.Unlock()
		if f.StreamID > c.maxClientID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
		}
		if st := c.streams[f.StreamID]; st != nil {
			if st.served && st.ctx != nil {
				st.abort.Fire() // nobody is left to answer
			}
			c.forget(st, errBodyReset)
			c.setDeadline()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			c.mu.Lock()
			_ = c.fr.WritePing(true, f.Data) // write errors show on the next read
			c.mu.Unlock()
		}
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
	case *http2.GoAwayFrame:
		c.mu.Lock()
		defer c.mu.Unlock()
		c.peerGoAway = true
		if c.quiet() {
			return errClosing
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil // unknown frame types are ignored
}

// resetLocked sends RST_STREAM and forgets the stream.
func (c *conn) resetLocked(id uint32, code http2.ErrCode) {
	if c.closed {
		return
	}
	_ = c.fr.WriteRSTStream(id, code) // write errors show on the next read
	if st := c.streams[id]; st != nil {
		c.forget(st, errBodyStreamReset)
		c.resetByUs[c.resetNext%uint8(len(c.resetByUs))] = id
		c.resetNext++
	}
}

// wasResetByUs: lb reset stream id lately. Frames the client sent before
// it saw the RST_STREAM are ignored rather than answered with another
// (RFC 9113 section 5.4.2).
func (c *conn) wasResetByUs(id uint32) bool {
	for _, r := range c.resetByUs {
		if r == id {
			return true
		}
	}
	return false
}

// forget drops a reset stream; a handler serving it writes nothing more,
// and reads of its streamed body fail with why.
func (c *conn) forget(st *stream, why error) {
	st.reset = true
	delete(c.streams, st.id)
	switch {
	case !st.served:
		c.unserved--
		c.release(st)
	case st.body != nil:
		c.failBody(st, why)
	}
	c.cond.Broadcast()
}

func (c *conn) release(st *stream) {
	c.unhold(st)
	st.ctx.Request.Reset()
	st.ctx.Response.Reset()
	c.srv.ctxs.Put(st.ctx)
	st.ctx = nil
}

// dropBody drops the body st has received before it is served: it will
// not be forwarded.
func (c *conn) dropBody(st *stream) {
	st.ctx.Request.ResetBody()
	c.unhold(st)
}

// unhold returns what st held to the budgets, and the client's credit
// with it.
func (c *conn) unhold(st *stream) {
	if st.held == 0 {
		return
	}
	c.held -= st.held
	bodymem.Give(st.held)
	st.held = 0
	c.refill()
}
