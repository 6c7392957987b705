package h2

import (
	"golang.org/x/net/http2"

	"github.com/offloadlb/lb/internal/bodymem"
)

// What an HTTP/2 client sends of request bodies is held in memory: a body
// read whole (at most Options.BodyBuffer) until its request finishes, a
// body that streams until the handler reads it (at most a stream window).
// What lb lets clients make it hold is budgeted: flow-control credit for
// the connection is given only while the bytes held stay within the
// connection's budget and the process's, so a client that sends many
// bodies and never ends them, or whose handlers do not read them, waits
// for credit instead of growing lb.

// connBodyBudget is the least a connection may hold of request bodies; a
// connection may hold twice max_request_body if that is more, so that
// one body of the largest size always fits beside others. All
// connections together hold at most global.max_body_memory (see
// internal/bodymem), or one connection's budget if that is larger.
const connBodyBudget = 16 << 20

// connBudget is the request-body budget of a connection of a listener
// whose bodies may be maxBody bytes long.
func connBudget(maxBody int) int64 { return max(connBodyBudget, 2*int64(maxBody)) }

// refill gives the client connection credit up to connWindow, as far
// as the connection's body budget and the process's have room: what the
// client may send and what lb holds stay within them. Credit goes in
// steps of half a window, or of half what is left when little is.
func (c *conn) refill() {
	if c.closed {
		return
	}
	own := c.budget - c.held
	room := min(own, bodymem.Room(c.budget), connWindow)
	if inc := room - c.recvWin; inc > 0 && inc >= min(connWindow, room)/2 {
		_ = c.fr.WriteWindowUpdate(0, uint32(inc)) // write errors show on the next read
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
		bodymem.Wait(c.refillLocking)
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
