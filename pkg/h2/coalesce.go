package h2

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// maxPending is how much a coalescingConn holds before Write waits for
// the socket: enough for many small responses, little enough that a
// client that stops reading is felt at once.
const maxPending = 64 << 10

// keepBuffer is the largest buffer kept between bursts of writes.
const keepBuffer = 16 << 10

// closeFlushWait bounds how long Close waits for held bytes (a GOAWAY, the
// end of a response) to reach a client that does not read.
const closeFlushWait = 2 * time.Second

// coalescingConn is what an HTTP/2 connection writes its frames to. A
// Write only appends to a buffer and wakes a flusher, which writes
// whatever has gathered by the time it runs as one TLS record. Under load
// the responses of many streams share a record and a system call (as
// HAProxy's and NGINX's event loops do); when idle, a response goes out
// as soon as the writer's goroutine yields. Order is kept; a write error
// is returned by the next Write; past maxPending held bytes Write waits.
type coalescingConn struct {
	net.Conn
	// writeTimeout bounds each write to the socket; 0 for none.
	writeTimeout time.Duration

	mu       sync.Mutex
	cond     sync.Cond
	pending  []byte
	spare    []byte
	flushing bool
	closed   bool
	err      error
}

func newCoalescingConn(c net.Conn, writeTimeout time.Duration) *coalescingConn {
	cc := &coalescingConn{Conn: c, writeTimeout: writeTimeout}
	cc.cond.L = &cc.mu
	return cc
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.pending) >= maxPending && c.err == nil {
		c.cond.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.pending = append(c.pending, p...)
	if !c.flushing {
		c.flushing = true
		go c.flush()
	}
	c.mu.Unlock()
	return len(p), nil
}

// flush writes what is pending until nothing is. It first lets every
// goroutine that is ready run: other streams whose backends answered in
// the same poll add their responses before the write.
func (c *coalescingConn) flush() {
	runtime.Gosched()
	c.mu.Lock()
	for len(c.pending) > 0 && c.err == nil {
		b := c.pending
		c.pending = c.spare[:0]
		closed := c.closed
		c.mu.Unlock()
		if c.writeTimeout > 0 && !closed {
			_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout)) // fails only on a closed connection, which the write reports
		}
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		c.spare = b[:0]
		if err != nil {
			c.err = err
		}
		c.cond.Broadcast()
	}
	c.flushing = false
	if c.closed || c.err != nil {
		c.pending, c.spare = nil, nil
	}
	// An idle connection keeps no large buffer.
	if cap(c.pending) > keepBuffer {
		c.pending = nil
	}
	if cap(c.spare) > keepBuffer {
		c.spare = nil
	}
	c.cond.Broadcast()
	c.mu.Unlock()
}

// Close sends what is held (for at most closeFlushWait) and closes.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.Conn.Close()
	}
	c.closed = true
	if c.flushing {
		// A client that does not read must not hold Close up.
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushWait)) // fails only on a closed connection, which Close reports
		for c.flushing {
			c.cond.Wait()
		}
	}
	c.mu.Unlock()
	return c.Conn.Close()
}
