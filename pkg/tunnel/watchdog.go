package tunnel

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Timeouts bound a Pipe. A zero field means no bound. It is a plain
// value, which Pipe copies.
type Timeouts struct {
	// Idle ends the pipe once no byte has moved either way for this long
	// (HAProxy's timeout client/server in tcp mode).
	Idle time.Duration
	// Write ends it once one side has taken none of the bytes lb holds
	// for it for this long: a peer that stopped reading, even while the
	// other way is busy.
	Write time.Duration
}

// Errors a Pipe ends with when a timeout cut it.
var (
	ErrIdle           = errors.New("idle timeout: no byte moved either way")
	ErrClientStalled  = errors.New("write timeout: the client stopped reading")
	ErrBackendStalled = errors.New("write timeout: the backend stopped reading")
)

// direction is one way of a Pipe, as its copy loop reports it to the
// watchdog. The loop only stores flags and adds to a counter, so a chunk
// costs no deadline or clock read.
type direction struct {
	count    *atomic.Int64 // bytes written to dst
	writing  atomic.Bool   // in a write to dst
	splicing atomic.Bool   // src and dst are set; the kernel copies
	src, dst *net.TCPConn

	// The watchdog's own, from its last look.
	seenCount      int64
	seenReceived   uint64
	seenAcked      uint64
	stalledSince   time.Time
	stalledErr     error
	sawSocketsOnce bool
}

// watchdog enforces a Pipe's Timeouts with one timer for the connection,
// rather than a deadline per read and write: deadlines cannot follow a
// copy the kernel does (splice), and one that runs out during splice
// drops what its pipe holds, so it could only be a cut anyway. Every tick
// (a quarter of the shorter bound) it looks at what each direction
// reported and, for a spliced one, at both sockets' TCP_INFO; so a bound
// is enforced late by at most two ticks (half the shorter bound).
type watchdog struct {
	t                Timeouts
	client, upstream net.Conn
	dirs             [2]*direction
	tick             time.Duration
	timer            *time.Timer

	mu         sync.Mutex
	stopped    bool
	err        error // why it cut the pipe
	lastActive time.Time
}

// startWatchdog starts watching; nil when t sets no bound.
func startWatchdog(t Timeouts, client, upstream net.Conn, toBackend, toClient *direction) *watchdog {
	tick := t.Idle
	if t.Write > 0 && (tick <= 0 || t.Write < tick) {
		tick = t.Write
	}
	if tick <= 0 {
		return nil
	}
	toBackend.stalledErr, toClient.stalledErr = ErrBackendStalled, ErrClientStalled
	w := &watchdog{t: t, client: client, upstream: upstream, dirs: [2]*direction{toBackend, toClient},
		tick: max(tick/4, time.Millisecond), lastActive: time.Now()}
	w.timer = time.AfterFunc(w.tick, w.check)
	return w
}

// stop ends the watch and returns why the watchdog cut the pipe, if it
// did.
func (w *watchdog) stop() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
	return w.err
}

func (w *watchdog) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.err != nil {
		return
	}
	now := time.Now()
	active := false
	var sockets socketLook
	for _, d := range w.dirs {
		took, pending, got := d.progress(&sockets)
		active = active || took || got
		if !pending || took {
			d.stalledSince = time.Time{}
			continue
		}
		if d.stalledSince.IsZero() {
			d.stalledSince = now
		}
		if w.t.Write > 0 && now.Sub(d.stalledSince) >= w.t.Write {
			w.cut(d.stalledErr)
			return
		}
	}
	if active {
		w.lastActive = now
	} else if w.t.Idle > 0 && now.Sub(w.lastActive) >= w.t.Idle {
		w.cut(ErrIdle)
		return
	}
	w.timer.Reset(w.tick)
}

// socketLook keeps one look's TCP_INFO of the two sockets of a pipe, which
// both directions share when both are spliced.
type socketLook struct {
	n    int
	conn [2]*net.TCPConn
	p    [2]socketProgress
	ok   [2]bool
}

func (m *socketLook) get(c *net.TCPConn) (socketProgress, bool) {
	for i := range m.n {
		if m.conn[i] == c {
			return m.p[i], m.ok[i]
		}
	}
	p, ok := tcpProgress(c)
	if m.n < len(m.conn) {
		m.conn[m.n], m.p[m.n], m.ok[m.n] = c, p, ok
		m.n++
	}
	return p, ok
}

// progress reports, since the last look, whether dst took bytes, whether
// bytes wait for dst now, and whether src sent any.
func (d *direction) progress(sockets *socketLook) (took, pending, got bool) {
	if c := d.count.Load(); c != d.seenCount {
		d.seenCount, took = c, true
	}
	pending = d.writing.Load()
	if !d.splicing.Load() {
		return took, pending, false
	}
	// The kernel moves the bytes: the sockets tell how far it got.
	if src, ok := sockets.get(d.src); ok {
		got = d.sawSocketsOnce && src.received != d.seenReceived
		d.seenReceived = src.received
	}
	if dst, ok := sockets.get(d.dst); ok {
		took = took || d.sawSocketsOnce && dst.acked != d.seenAcked
		d.seenAcked = dst.acked
		pending = pending || dst.pending
	}
	if !d.sawSocketsOnce {
		// The first look only sets the baseline; count it as progress,
		// since the copy was busy enough to move to splice.
		d.sawSocketsOnce, took, got = true, true, true
	}
	return took, pending, got
}

// cut ends the pipe: both connections close, and whatever is blocked on
// them returns.
func (w *watchdog) cut(err error) {
	w.err = err
	abort(w.client, w.upstream)
}

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// abort closes both connections of a pipe. A connection taken over from
// the HTTP server (a WebSocket's client side) ignores Close, the server
// closing it once its handler returns, so a deadline in the past is set
// too, which unblocks its reads and writes. Close comes first: a TLS
// connection closed while a write is blocked drops the socket at once,
// where one no longer writing would first try to send close_notify.
func abort(client, upstream net.Conn) {
	// The pipe is being cut for a cause of its own: what closing says
	// (already closed, a close_notify not sent) is of no interest.
	_ = client.Close()
	_ = upstream.Close()
	_ = client.SetDeadline(aLongTimeAgo)
	_ = upstream.SetDeadline(aLongTimeAgo)
}
