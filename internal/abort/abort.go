// Package abort carries a client's going away from the front end that
// sees it to the backend exchange serving the client's request.
package abort

import (
	"io"
	"sync"

	"github.com/valyala/fasthttp"
)

// Signal cuts a request's exchange with its backend when the client goes
// away (an HTTP/2 stream the client resets). A backend working on an
// answer nobody will read would otherwise hold its slot until it answers
// or the response timeout passes, and a client that starts and cancels
// requests in a loop could keep every slot of a pool busy; NGINX cuts
// them too, by default.
//
// The front end serving the client owns the Signal, hands it to the
// request with Set, and calls Fire. The backend client attaches each
// connection it sends the request on, and detaches it before the
// connection is pooled again or closed. Fire closes the attached
// connection, so that whatever reads or writes it fails at once.
//
// The zero value is ready to use; all methods are safe for concurrent
// use. A Signal serves one request at a time: Reset readies it for the
// next.
type Signal struct {
	mu    sync.Mutex
	conn  io.Closer // attached, or nil
	fired bool
}

// Fire cuts the attached exchange, if any, and any the request would
// start after it.
func (s *Signal) Fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fired = true
	if s.conn != nil {
		_ = s.conn.Close() // a close error leaves nothing to cut
	}
}

// Fired reports whether Fire was called since the last Reset. A nil
// Signal never fires.
func (s *Signal) Fired() bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fired
}

// Reset readies s for another request. It must not be called while an
// exchange using s is under way.
func (s *Signal) Reset() {
	s.mu.Lock()
	s.conn, s.fired = nil, false
	s.mu.Unlock()
}

// Attach makes c what Fire closes; false, and c not attached, if s has
// fired already. c's Close must not call back into s.
func (s *Signal) Attach(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fired {
		return false
	}
	s.conn = c
	return true
}

// Detach releases c, if it is what is attached, and reports whether s
// has fired (c may be closed then).
func (s *Signal) Detach(c io.Closer) (fired bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == c {
		s.conn = nil
	}
	return s.fired
}

// key is the user-value key a request's Signal is kept under.
type key struct{}

// Set hands s to the request in ctx, for the backend client to find
// with From.
func Set(ctx *fasthttp.RequestCtx, s *Signal) { ctx.SetUserValue(key{}, s) }

// From returns the Signal Set gave the request in ctx, or nil.
func From(ctx *fasthttp.RequestCtx) *Signal {
	s, _ := ctx.UserValue(key{}).(*Signal)
	return s
}
