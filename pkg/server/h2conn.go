package server

import (
	"sync"
	"time"

	"github.com/offloadlb/lb/pkg/tlsterm"
)

// maxPending is how much a coalescingConn holds before Write waits for
// the socket: enough for many small responses, little enough that a
// client that stops reading is felt at once.
const maxPending = 64 << 10

// closeFlushWait bounds how long Close waits for held bytes (a GOAWAY, the
// end of a response) to reach a client that does not read.
const closeFlushWait = 2 * time.Second

// coalescingConn is the connection an HTTP/2 client is served on. The
// HTTP/2 server flushes after every frame batch it writes, which under
// load means a TLS record and a write system call per response; here a
// Write only appends to a buffer and wakes a flusher, which writes
// whatever has gathered by the time it runs as one TLS record. Under load
// the responses of many streams share a record and a system call (as
// HAProxy's and NGINX's event loops do); when idle, a response goes out
// as soon as the writer's goroutine yields. Order is kept; a write error
// is returned by the next Write; past maxPending held bytes Write waits.
type coalescingConn struct {
	*tlsterm.Conn

	mu       sync.Mutex
	cond     sync.Cond
	pending  []byte
	spare    []byte
	flushing bool
	closed   bool
	err      error
}

func newCoalescingConn(c *tlsterm.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
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

// flush writes what is pending until nothing is.
func (c *coalescingConn) flush() {
	c.mu.Lock()
	for len(c.pending) > 0 && c.err == nil {
		b := c.pending
		c.pending = c.spare[:0]
		c.mu.Unlock()
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		if cap(b) <= 2*maxPending {
			c.spare = b[:0]
		}
		if err != nil {
			c.err = err
		}
		c.cond.Broadcast()
	}
	c.flushing = false
	if c.closed || c.err != nil {
		c.pending, c.spare = nil, nil
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
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlushWait)) //nolint:errcheck
		for c.flushing {
			c.cond.Wait()
		}
	}
	c.mu.Unlock()
	return c.Conn.Close()
}
