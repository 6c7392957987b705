package proxy

import (
	"sync"
	"sync/atomic"
)

// Request bodies are read whole before a request is served, so what an
// HTTP/2 client sends is held in memory until its request finishes. What
// lb lets clients make it hold is budgeted: flow-control credit for the
// connection is given only while the bytes held stay within the
// connection's budget and the process's, so a client that sends many
// bodies and never ends them waits for credit instead of growing lb.
const (
	// h2ConnBodyBudget is the least a connection may hold of request
	// bodies; a connection may hold twice max_request_body if that is
	// more, so that one body of the largest size always fits beside
	// others.
	h2ConnBodyBudget = 16 << 20
	// h2ProcessBodyBudget bounds the request-body bytes all HTTP/2
	// connections of the process hold together (or one connection's
	// budget, if that is larger).
	h2ProcessBodyBudget = 256 << 20
)

// h2ConnBudget is the request-body budget of a connection of a listener
// whose bodies may be maxBody bytes long.
func h2ConnBudget(maxBody int) int64 { return max(h2ConnBodyBudget, 2*int64(maxBody)) }

// bodyBudget counts the request-body bytes HTTP/2 connections hold, and
// the connections waiting for some of them to be released before they
// give their clients more credit.
type bodyBudget struct {
	limit   int64 // h2ProcessBodyBudget; lower in tests
	used    atomic.Int64
	nwait   atomic.Int32
	mu      sync.Mutex
	waiting []*h2Conn
}

var h2Bodies = bodyBudget{limit: h2ProcessBodyBudget}

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
func (b *bodyBudget) wait(c *h2Conn) {
	b.mu.Lock()
	b.waiting = append(b.waiting, c)
	b.nwait.Store(int32(len(b.waiting)))
	b.mu.Unlock()
}
