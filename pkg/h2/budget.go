package h2

import (
	"sync"
	"sync/atomic"

	"golang.org/x/net/http2"
)

// What an HTTP/2 client sends of request bodies is held in memory: a body
// read whole (at most Options.BodyBuffer) until its request finishes, a
// body that streams until the handler reads it (at most a stream window).
// What lb lets clients make it hold is budgeted: flow-control credit for
// the connection is given only while the bytes held stay within the
// connection's budget and the process's, so a client that sends many
// bodies and never ends them, or whose handlers do not read them, waits
// for credit instead of growing lb.
const (
	// connBodyBudget is the least a connection may hold of request
	// bodies; a connection may hold twice max_request_body if that is
	// more, so that one body of the largest size always fits beside
	// others.
	connBodyBudget = 16 << 20
	// processBodyBudget bounds the request-body bytes all HTTP/2
	// connections of the process hold together (or one connection's
	// budget, if that is larger).
	processBodyBudget = 256 << 20
)

// connBudget is the request-body budget of a connection of a listener
// whose bodies may be maxBody bytes long.
func connBudget(maxBody int) int64 { return max(connBodyBudget, 2*int64(maxBody)) }

// bodyBudget counts the request-body bytes HTTP/2 connections hold, and
// the connections waiting for some of them to be released before they
// give their clients more credit.
type bodyBudget struct {
	limit   int64 // processBodyBudget; lower in tests
	used    atomic.Int64
	nwait   atomic.Int32
	mu      sync.Mutex
	waiting []*conn
}

var bodies = bodyBudget{limit: processBodyBudget}

// room is how much more the process may hold, for a connection whose own
// budget is budget.
func (b *bodyBudget) room(budget int64) int64 { return max(b.limit, budget) - b.used.Load() }

// take counts n more bytes held, unless that would pass the limit.
func (b *bodyBudget) take(n, budget int64) bool {
	if b.used.Add(n) > max(b.limit, budget) {
		b.used.Add(-n)
		return false
	}
	return true
}

// add counts n more bytes held, within the limit or not: bytes already
// credited to a client whose request is being served.
func (b *bodyBudget) add(n int64) { b.used.Add(n) }

// give releases n bytes and wakes the connections waiting for room.
func (b *bodyBudget) give(n int64) {
	b.used.Add(-n)
	if b.nwait.Load() == 0 {
		return
	}
	b.mu.Lock()
	w := b.waiting
	b.waiting = nil
	b.nwait.Store(0)
	b.mu.Unlock()
	for _, c := range w {
		// Not here: the caller holds its own connection's lock.
		go c.refillLocking()
	}
}

// wait has c woken by the next release.
func (b *bodyBudget) wait(c *conn) {
	b.mu.Lock()
	b.waiting = append(b.waiting, c)
	b.nwait.Store(int32(len(b.waiting)))
	b.mu.Unlock()
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
