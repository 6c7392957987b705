// Package bodymem counts the body bytes lb holds in memory for requests
// and responses in flight, against one limit for the whole process
// (global.max_body_memory). Whatever holds a body reads it whole only
// while the count stays within the limit, and otherwise does without:
// an HTTP/1.1 request body streams from its first byte, an HTTP/2 client
// waits for flow-control credit, a small response streams to the client
// instead of being read whole, a cacheable response is not stored, and
// a response is not compressed (pkg/compress counts each encoder a
// response holds).
// So no mix of clients can make lb's body memory pass the limit, and
// none is refused for it: what streams costs a fixed amount per exchange
// (its connection's buffers), whatever its size.
//
// Bodies that stream are not counted: they hold only the fixed buffers of
// the exchange. Nor are cache entries, which their cache's max_size
// bounds.
package bodymem

import (
	"sync"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

// DefaultLimit is global.max_body_memory's default: 4,096 bodies of 64
// KiB (body_buffer's default, and the largest response read whole) at
// once.
const DefaultLimit = 256 << 20

var (
	limit atomic.Int64
	used  atomic.Int64
	full  atomic.Uint64 // bodies that did without for want of room

	nwait   atomic.Int32
	mu      sync.Mutex
	waiting []func()
)

func init() { limit.Store(DefaultLimit) }

// SetLimit sets the limit; what is held past a lowered one is released
// as it would have been, and nothing more is taken until there is room.
func SetLimit(n int64) { limit.Store(n) }

// Limit is the limit.
func Limit() int64 { return limit.Load() }

// Used is how many bytes are held.
func Used() int64 { return used.Load() }

// Full counts the bodies that did without memory (streamed, waited, or
// were not stored) because the limit was reached.
func Full() uint64 { return full.Load() }

// Take counts n more bytes held, unless that would pass the limit, and
// reports whether it did.
func Take(n int64) bool { return TakeWithin(n, 0) }

// TakeWithin is Take with a limit of at least floor: a holder whose own
// budget is larger than the process's may always fill it (an HTTP/2
// connection's budget holds at least one body of max_request_body).
func TakeWithin(n, floor int64) bool {
	if used.Add(n) > max(limit.Load(), floor) {
		used.Add(-n)
		full.Add(1)
		return false
	}
	return true
}

// Room is how many more bytes may be taken, with a limit of at least
// floor (see TakeWithin); it may be negative.
func Room(floor int64) int64 { return max(limit.Load(), floor) - used.Load() }

// Add counts n more bytes held, within the limit or not: bytes a holder
// could not refuse (an HTTP/2 client may send what it was credited
// before the limit was lowered).
func Add(n int64) { used.Add(n) }

// Give releases n bytes, and wakes whoever waits for room.
func Give(n int64) {
	used.Add(-n)
	if nwait.Load() == 0 {
		return
	}
	mu.Lock()
	w := waiting
	waiting = nil
	nwait.Store(0)
	mu.Unlock()
	for _, f := range w {
		// Not on the releasing goroutine, which may hold locks f takes.
		go f()
	}
}

// Wait has f run, on a goroutine of its own, after the next Give.
// Whoever waits must look at Room again after Wait returns: a Give
// between its last look and the Wait wakes no one.
func Wait(f func()) {
	mu.Lock()
	waiting = append(waiting, f)
	nwait.Store(int32(len(waiting)))
	mu.Unlock()
}

// HoldFor counts n bytes as held by req until it is reset, which the
// front ends do once its response has been written: a response body read
// whole is held until the client has it. It is given back at once if
// req is reset before. n must have been taken (Take) or added (Add).
func HoldFor(req *fasthttp.Request, n int64) {
	if h, ok := req.UserValue(holdKey{}).(*hold); ok {
		h.n += n
		return
	}
	h := holds.Get().(*hold)
	h.n = n
	req.SetUserValue(holdKey{}, h)
}

// holdKey is the request user value's key a hold goes under.
type holdKey struct{}

// hold gives its bytes back when its request is reset (fasthttp closes
// a request's user values that are io.Closers).
type hold struct{ n int64 }

var holds = sync.Pool{New: func() any { return new(hold) }}

func (h *hold) Close() error {
	Give(h.n)
	h.n = 0
	holds.Put(h)
	return nil
}
