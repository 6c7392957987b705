package abort

import (
	"testing"

	"github.com/valyala/fasthttp"
)

type closer struct{ closed int }

func (c *closer) Close() error { c.closed++; return nil }

func TestSignal(t *testing.T) {
	var s Signal
	a, b := &closer{}, &closer{}
	if !s.Attach(a) {
		t.Fatal("attach refused before Fire")
	}
	if s.Detach(a) {
		t.Fatal("detach says fired")
	}
	s.Fire() // nothing attached: closes nothing
	if a.closed != 0 {
		t.Fatal("Fire closed a detached connection")
	}
	if s.Attach(b) {
		t.Fatal("attach accepted after Fire")
	}
	s.Reset()
	if s.Fired() || !s.Attach(b) {
		t.Fatal("Reset did not ready the signal")
	}
	s.Fire()
	if b.closed != 1 || !s.Fired() || !s.Detach(b) {
		t.Fatalf("Fire on an attached connection: closed %d, fired %v", b.closed, s.Fired())
	}
	var none *Signal
	if none.Fired() {
		t.Fatal("a nil signal fired")
	}
}

func TestSetFrom(t *testing.T) {
	var ctx fasthttp.RequestCtx
	if From(&ctx) != nil {
		t.Fatal("a signal before Set")
	}
	var s Signal
	Set(&ctx, &s)
	if From(&ctx) != &s {
		t.Fatal("From is not what Set gave")
	}
}
