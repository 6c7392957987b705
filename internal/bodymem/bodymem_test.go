package bodymem

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestTakeWithinLimit: takes past the limit are refused and counted, the
// floor lets a holder with a larger budget of its own fill it, and Give
// makes room again.
func TestTakeWithinLimit(t *testing.T) {
	SetLimit(1000)
	defer SetLimit(DefaultLimit)
	full0 := Full()
	if !Take(600) || !Take(400) {
		t.Fatal("takes within the limit refused")
	}
	if Take(1) {
		t.Error("a take past the limit was allowed")
	}
	if Full() != full0+1 {
		t.Errorf("full counted %d times, want 1", Full()-full0)
	}
	if !TakeWithin(500, 1500) || Room(1500) != 0 || Room(0) != -500 {
		t.Errorf("floor: room %d (floor 1500), %d (no floor)", Room(1500), Room(0))
	}
	Give(1500)
	if Used() != 0 || Room(0) != 1000 {
		t.Errorf("after giving all back: used %d, room %d", Used(), Room(0))
	}
}

// TestWaitWokenByGive: a waiter runs after the next Give, once.
func TestWaitWokenByGive(t *testing.T) {
	woken := make(chan struct{}, 2)
	Wait(func() { woken <- struct{}{} })
	Add(10)
	Give(10)
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not woken by Give")
	}
	Add(10)
	Give(10)
	select {
	case <-woken:
		t.Error("waiter woken twice")
	case <-time.After(50 * time.Millisecond):
	}
}

// TestHoldForLastsUntilReset: bytes held for a request are given back
// when the request is reset (as the front ends do once its response is
// written), holds on one request add up, and none allocates once the
// pool is warm.
func TestHoldForLastsUntilReset(t *testing.T) {
	var req fasthttp.Request
	Add(300)
	HoldFor(&req, 100)
	HoldFor(&req, 200)
	if Used() != 300 {
		t.Fatalf("used %d, want 300", Used())
	}
	req.Reset()
	if Used() != 0 {
		t.Fatalf("used %d after the request was reset, want 0", Used())
	}
	allocs := testing.AllocsPerRun(100, func() {
		Add(64)
		HoldFor(&req, 64)
		req.Reset()
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per hold", allocs)
	}
	if Used() != 0 {
		t.Errorf("used %d, want 0", Used())
	}
}
