package h2

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
)

// The reader's handling of the frames that carry requests and the
// client's settings and credit. All run on the connection's reader
// goroutine (serve).

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
		// Trailers: the end of a request body, and fields for the
		// request (RFC 9113 section 8.1).
		switch {
		case st.remoteDone:
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
		case !ended || c.hb.pseudo > 0:
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		c.takeTrailers(st)
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
	case hd.continue_ || hd.declared > int64(c.srv.o.BodyBuffer):
		// Served at once, its body streaming: it is larger than what
		// is buffered, or the client waits for 100 Continue before
		// sending it and must not wait for ReadTimeout.
		if hd.continue_ {
			c.writeInterim(id, fasthttp.StatusContinue)
		}
		c.streamBody(st)
		c.serveStream(st)
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
// whole within ReadTimeout, nor began to stream their bodies, as an
// HTTP/1.1 connection is answered: their bodies are dropped and the
// client is told to stop sending them (RST_STREAM NO_ERROR after the
// answer). Frames on the connection, empty DATA among them, do not extend
// the time a request has.
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
		if st.body != nil && !st.body.dead() {
			c.endBody(st)
		}
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
		// Malformed (RFC 9113 section 8.1.1).
		if st.body != nil {
			c.malformedBody(st)
			return nil
		}
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	switch {
	case st.body != nil:
		c.bodyData(st, data)
	case !st.served:
		switch {
		case c.srv.o.MaxBody > 0 && st.got > int64(c.srv.o.MaxBody):
			st.err = fasthttp.ErrBodyTooLarge
			c.dropBody(st)
			c.serveStream(st)
		case !bodymem.TakeWithin(int64(len(data)), c.budget):
			// The process holds all it may: credit other connections
			// had already been given came in first. Not processed, so
			// safe for the client to retry (RFC 9113 8.7).
			c.resetLocked(id, http2.ErrCodeRefusedStream)
			return nil
		default:
			st.held += int64(len(data))
			c.held += int64(len(data))
			st.ctx.Request.AppendBody(data)
			if !f.StreamEnded() && st.got > int64(c.srv.o.BodyBuffer) {
				// More than is buffered: served now, the rest
				// streaming to it.
				c.streamBody(st)
				c.serveStream(st)
			}
		}
	}
	if f.StreamEnded() {
		err := c.endOfRequest(st)
		c.setDeadline()
		return err
	}
	if st.body != nil {
		// Credit comes back as the body is read; here only for padding.
		c.creditStream(st)
		c.setDeadline()
		return nil
	}
	st.unacked += n
	if st.unacked >= streamWindow/2 {
		_ = c.fr.WriteWindowUpdate(id, uint32(st.unacked)) // write errors show on the next read
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
	_ = c.fr.WriteSettingsAck() // write errors show on the next read
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
