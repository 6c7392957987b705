package h2

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/httpstatus"
)

// Flow-control windows lb offers a client for request bodies. Stream
// credit is given back as data arrives, half a window at a time (a body is
// bounded by MaxBody); connection credit as the body budget allows (see
// budget.go).
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
// reads and acts on every frame; a request runs on a goroutine of its own
// once its last frame is in. Protocol state, the HPACK encoder and all
// frame writes are under mu; writes go to a coalescingConn, so the
// responses of many streams leave in one TLS record.
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

	served     bool // its handler started
	remoteDone bool // the client ended the stream
	localDone  bool // lb ended the stream
	reset      bool // reset by either side: nothing more is written
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
			if !st.served {
				c.release(st)
			}
		}
		c.mu.Unlock()
		c.w.Close()
		c.wg.Wait()
	}()
	c.mu.Lock()
	c.fr.WriteSettings( //nolint:errcheck // write errors show on the next read
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.o.MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.fr.MaxHeaderListSize},
	)
	c.fr.WriteWindowUpdate(0, connWindow-65535) //nolint:errcheck
	c.mu.Unlock()

	wait := c.srv.o.ReadTimeout
	if wait == 0 {
		wait = c.srv.o.IdleTimeout
	}
	if wait > 0 {
		c.nc.SetReadDeadline(time.Now().Add(wait)) //nolint:errcheck
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
		c.fr.WriteGoAway(c.maxClientID, code, nil) //nolint:errcheck
		c.sentGoAway = true
	}
	c.mu.Unlock()
}

// goAway starts a graceful stop of this connection (Server.GoAway).
func (c *conn) goAway() {
	c.mu.Lock()
	if !c.sentGoAway && !c.closed {
		c.fr.WriteGoAway(c.maxClientID, http2.ErrCodeNo, nil) //nolint:errcheck
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
	c.nc.SetReadDeadline(t) //nolint:errcheck
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
			c.forget(st)
			c.setDeadline()
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			c.mu.Lock()
			c.fr.WritePing(true, f.Data) //nolint:errcheck
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

func (c *conn) onHeaders(f *http2.HeadersFrame) error {
	// What is needed of f, before decode reads the frames after it.
	id, ended := f.StreamID, f.StreamEnded()
	selfDep := f.HasPriority() && f.Priority.StreamDep == id
	hp := headBufPool.Get().(*[]byte)
	defer func() {
		*hp, c.hb.head = c.hb.head[:0], nil
		headBufPool.Put(hp)
	}()
	c.hb.start(*hp)
	if err := c.hb.decode(f, c.fr); err != nil {
		return err
	}
	if c.hb.refused() {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if st := c.streams[id]; st != nil {
		// Trailers: the end of a request body. They are not passed on.
		switch {
		case st.remoteDone:
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		case !ended || c.hb.pseudo > 0:
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		return c.endOfRequest(st)
	}
	if id <= c.maxClientID {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.maxClientID = id
	if c.sentGoAway {
		return nil // past the last stream the GOAWAY promised to serve
	}
	if selfDep {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if uint32(len(c.streams)) >= c.srv.o.MaxStreams || uint32(c.handlers) >= c.srv.o.MaxStreams {
		// Over the advertised limit, or streams reset by the client
		// whose requests are still being served (the "rapid reset"
		// pattern): refused, safe for the client to retry.
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	}
	ctx := c.srv.ctxs.Get().(*fasthttp.RequestCtx)
	ctx.Init2(c.nc, c.srv.o.Logger, false)
	hd, err := c.hb.request(ctx, c.srv)
	if errors.Is(err, errMalformed) {
		ctx.Request.Reset()
		c.srv.ctxs.Put(ctx)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	st := &stream{id: id, ctx: ctx, err: err, declared: hd.declared, sendWin: c.initWin, recvWin: streamWindow}
	c.streams[id] = st
	c.unserved++
	switch {
	case ended:
		if err := c.endOfRequest(st); err != nil {
			return err
		}
	case st.err != nil:
		c.serveStream(st) // answered now; the body that follows is dropped
	case hd.continue_:
		c.writeInterim(id, fasthttp.StatusContinue)
	}
	if !st.served && c.srv.o.ReadTimeout > 0 {
		c.expireAt(st, time.Now().Add(c.srv.o.ReadTimeout))
	}
	c.setDeadline()
	return nil
}

// expireAt gives st until t to send the rest of its request.
func (c *conn) expireAt(st *stream, t time.Time) {
	st.expires = t
	if !c.timerAt.IsZero() && !t.Before(c.timerAt) {
		return // the timer fires first, and sets itself again for st
	}
	c.timerAt = t
	if c.timer == nil {
		c.timer = time.AfterFunc(time.Until(t), c.expire)
	} else {
		c.timer.Reset(time.Until(t))
	}
}

// errRequestTimeout: a request's head and body did not come in within
// ReadTimeout. Handler.ServeError answers 408.
var errRequestTimeout = fmt.Errorf("HTTP/2 request not complete within read_timeout: %w", os.ErrDeadlineExceeded)

// expire answers 408 to the streams whose requests did not come in
// whole within ReadTimeout, as an HTTP/1.1 connection is answered: their
// bodies are dropped and the client is told to stop sending them
// (RST_STREAM NO_ERROR after the answer). Frames on the connection, empty
// DATA among them, do not extend the time a request has.
func (c *conn) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.timerAt = time.Time{}
	if c.closed {
		return
	}
	now := time.Now()
	var next time.Time
	for _, st := range c.streams {
		switch {
		case st.served || st.expires.IsZero():
		case !now.Before(st.expires):
			st.err = errRequestTimeout
			c.dropBody(st)
			c.serveStream(st)
		case next.IsZero() || st.expires.Before(next):
			next = st.expires
		}
	}
	if !next.IsZero() {
		c.timerAt = next
		c.timer.Reset(next.Sub(now))
	}
	c.setDeadline()
}

// endOfRequest: the client ended st. Its request is served unless it
// already is.
func (c *conn) endOfRequest(st *stream) error {
	st.remoteDone = true
	if st.served {
		if st.localDone {
			delete(c.streams, st.id)
		}
		return nil
	}
	st.expires = time.Time{}
	if st.declared >= 0 && st.got != st.declared {
		return http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}
	}
	c.serveStream(st)
	return nil
}

func (c *conn) onData(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Length)
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.recvWin {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	// The connection's credit for data not kept comes back now, for
	// data kept once the budgets have room for more.
	c.recvWin -= n
	defer c.refill()
	st := c.streams[id]
	switch {
	case st == nil && id > c.maxClientID:
		return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
	case st == nil && c.wasResetByUs(id):
		return nil // its credit came back above
	case st == nil, st.remoteDone:
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	case n > st.recvWin:
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
	}
	st.recvWin -= n
	data := f.Data()
	st.got += int64(len(data))
	if st.declared >= 0 && st.got > st.declared {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	if !st.served {
		switch {
		case st.got > int64(c.srv.o.MaxBody):
			st.err = fasthttp.ErrBodyTooLarge
			c.dropBody(st)
			c.serveStream(st)
		case !bodies.take(int64(len(data)), c.budget):
			// The process holds all it may: credit other connections
			// had already been given came in first. Not processed, so
			// safe for the client to retry (RFC 9113 8.7).
			c.resetLocked(id, http2.ErrCodeRefusedStream)
			return nil
		default:
			st.held += int64(len(data))
			c.held += int64(len(data))
			st.ctx.Request.AppendBody(data)
		}
	}
	if f.StreamEnded() {
		err := c.endOfRequest(st)
		c.setDeadline()
		return err
	}
	st.unacked += n
	if st.unacked >= streamWindow/2 {
		c.fr.WriteWindowUpdate(id, uint32(st.unacked)) //nolint:errcheck
		st.recvWin += st.unacked
		st.unacked = 0
	}
	c.setDeadline()
	return nil
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if f.NumSettings() > maxSettings {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		if s.ID == http2.SettingInitialWindowSize {
			// Applies to every open stream at once (RFC 9113 6.9.2).
			delta := int64(s.Val) - c.initWin
			c.initWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.cond.Broadcast()
		}
		// The others need nothing: frames are sent at the default
		// size, the encoder keeps no table, lb pushes nothing.
		return nil
	})
	if err != nil {
		return err
	}
	c.fr.WriteSettingsAck() //nolint:errcheck
	return nil
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.sendWin += inc
		if c.sendWin > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.cond.Broadcast()
		return nil
	}
	st := c.streams[f.StreamID]
	if st == nil {
		if f.StreamID > c.maxClientID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // idle stream
		}
		return nil // closed: credit may still be in flight
	}
	st.sendWin += inc
	if st.sendWin > 1<<31-1 {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	c.cond.Broadcast()
	return nil
}

// resetLocked sends RST_STREAM and forgets the stream.
func (c *conn) resetLocked(id uint32, code http2.ErrCode) {
	if c.closed {
		return
	}
	c.fr.WriteRSTStream(id, code) //nolint:errcheck
	if st := c.streams[id]; st != nil {
		c.forget(st)
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

// forget drops a reset stream; a handler serving it writes nothing more.
func (c *conn) forget(st *stream) {
	st.reset = true
	delete(c.streams, st.id)
	if !st.served {
		c.unserved--
		c.release(st)
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

// dropBody drops the body st has received: it will not be forwarded.
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
	bodies.give(st.held)
	st.held = 0
	c.refill()
}

// refill gives the client connection credit up to connWindow, as far
// as the connection's body budget and the process's have room: what the
// client may send and what lb holds stay within them. Credit goes in
// steps of half a window, or of half what is left when little is.
func (c *conn) refill() {
	if c.closed {
		return
	}
	own := c.budget - c.held
	room := min(own, bodies.room(c.budget), connWindow)
	if inc := room - c.recvWin; inc > 0 && inc >= min(connWindow, room)/2 {
		c.fr.WriteWindowUpdate(0, uint32(inc)) //nolint:errcheck
		c.recvWin += inc
	}
	if own <= 0 && c.recvWin == 0 {
		c.evict()
		return
	}
	if room < min(own, connWindow) && c.recvWin < connWindow/2 && !c.waiting {
		// Short of credit for want of room in the process: woken when
		// another connection releases some.
		c.waiting = true
		bodies.wait(c)
		// A release between the look at the room and the wait wakes
		// no one.
		c.refill()
	}
}

// evict makes room in a connection whose budget is full of requests that
// are all still waiting for more of their bodies: none could finish, and
// all would wait for ReadTimeout. The newest is refused (RST_STREAM
// REFUSED_STREAM: nothing of it was forwarded, so the client may send it
// again), and the older ones go on.
func (c *conn) evict() {
	var newest *stream
	var unserved int64
	for _, st := range c.streams {
		if !st.served && st.held > 0 {
			unserved += st.held
			if newest == nil || st.id > newest.id {
				newest = st
			}
		}
	}
	if newest == nil || unserved < c.held {
		return // a request being served holds some: its end makes room
	}
	c.resetLocked(newest.id, http2.ErrCodeRefusedStream)
}

// refillLocking is refill for a connection woken by a release elsewhere.
func (c *conn) refillLocking() {
	c.mu.Lock()
	c.waiting = false
	c.refill()
	c.mu.Unlock()
}

// serveStream starts serving st's request on a goroutine of its own.
func (c *conn) serveStream(st *stream) {
	st.served = true
	c.unserved--
	c.handlers++
	c.wg.Add(1)
	c.srv.workers.Go(job{c, st}) // the pool is never closed
}

// job is a request to serve on a worker. A goroutine kept for reuse
// has the stack the request path needs; a fresh one per request would
// start small and grow it, copying it twice, on every request.
type job struct {
	c  *conn
	st *stream
}

func runJob(j job) { j.c.run(j.st) }

func (c *conn) run(st *stream) {
	defer c.wg.Done()
	ctx := st.ctx
	if st.err != nil {
		c.srv.h.ServeError(ctx, st.err)
	} else {
		c.srv.h.Serve(ctx)
	}
	c.writeResponse(st, ctx)
	ctx.Request.Reset()
	ctx.Response.Reset() // closes a streamed body: frees the backend
	ctx.ResetUserValues()
	c.srv.ctxs.Put(ctx)

	c.mu.Lock()
	c.unhold(st) // the body is forwarded, and ctx reset above
	c.handlers--
	st.ctx = nil
	done := c.quiet() && (c.sentGoAway || c.peerGoAway)
	if !done {
		c.setDeadline()
	}
	c.mu.Unlock()
	if done {
		c.w.Close()
	}
}

// writeResponse sends ctx.Response on st: the head, then the body, a
// streamed one flushed as it arrives so that event streams and long polls
// are not held back. A body that breaks off resets the stream, so the
// client cannot take it for whole.
func (c *conn) writeResponse(st *stream, ctx *fasthttp.RequestCtx) {
	resp := &ctx.Response
	code := resp.StatusCode()
	skip := ctx.IsHead() || resp.SkipBody || httpstatus.NoBody(code)
	streamed := resp.IsBodyStream()
	cl := resp.Header.ContentLength()
	var body []byte
	if !skip && !streamed {
		body = resp.Body()
		cl = len(body)
	}
	c.mu.Lock()
	if st.reset || c.closed {
		c.mu.Unlock()
		return
	}
	end := skip || (!streamed && len(body) == 0)
	c.writeHead(st.id, c.encodeHead(resp, cl), end)
	if end {
		c.endLocal(st)
		c.mu.Unlock()
		return
	}
	if !streamed {
		c.writeData(st, body, true)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()

	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	bs := resp.BodyStream()
	for {
		n, err := bs.Read(*bp)
		c.mu.Lock()
		ok := true
		if n > 0 || err == io.EOF {
			ok = c.writeData(st, (*bp)[:n], err == io.EOF)
		}
		if err != nil && err != io.EOF && ok {
			c.resetLocked(st.id, http2.ErrCodeInternal)
		}
		c.mu.Unlock()
		if err != nil || !ok {
			return
		}
	}
}

// writeHead writes a header block as HEADERS and, past the frame size,
// CONTINUATION frames.
func (c *conn) writeHead(id uint32, block []byte, end bool) {
	frag := block[:min(len(block), frameSize)]
	block = block[len(frag):]
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0}) //nolint:errcheck
	for len(block) > 0 {
		frag = block[:min(len(block), frameSize)]
		block = block[len(frag):]
		c.fr.WriteContinuation(id, len(block) == 0, frag) //nolint:errcheck
	}
}

// writeInterim sends a 1xx response head.
func (c *conn) writeInterim(id uint32, code int) {
	c.hbuf = appendStatus(c.hbuf[:0], code)
	c.writeHead(id, c.hbuf, false)
}

// writeData sends p on st within the flow-control credit the client
// gives, waiting for more (at most WriteTimeout); end ends the stream.
// False when the stream or connection is gone.
func (c *conn) writeData(st *stream, p []byte, end bool) bool {
	var timer *time.Timer
	var expired bool
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if st.reset || c.closed {
			return false
		}
		n := int64(len(p))
		if n > 0 {
			n = min(n, frameSize, st.sendWin, c.sendWin)
			if n <= 0 {
				if expired {
					c.resetLocked(st.id, http2.ErrCodeCancel)
					return false
				}
				if timer == nil && c.srv.o.WriteTimeout > 0 {
					timer = time.AfterFunc(c.srv.o.WriteTimeout, func() {
						c.mu.Lock()
						expired = true
						c.cond.Broadcast()
						c.mu.Unlock()
					})
				}
				c.cond.Wait()
				continue
			}
		}
		last := end && n == int64(len(p))
		if err := c.fr.WriteData(st.id, last, p[:n]); err != nil {
			return false
		}
		st.sendWin -= n
		c.sendWin -= n
		p = p[n:]
		if last {
			c.endLocal(st)
			return true
		}
		if len(p) == 0 {
			return true
		}
	}
}

// endLocal: lb ended st. A client still sending a body it no longer
// needs (the answer was 413) is told to stop.
func (c *conn) endLocal(st *stream) {
	st.localDone = true
	if !st.remoteDone {
		c.resetLocked(st.id, http2.ErrCodeNo)
		return
	}
	delete(c.streams, st.id)
}
