package balancer

import (
	"errors"
	"testing"
	"time"
)

// reports records what a Lease reports.
type reports struct {
	ok     int
	failed []string
}

func (r *reports) ReportSuccess(*Backend)                  { r.ok++ }
func (r *reports) ReportFailure(_ *Backend, reason string) { r.failed = append(r.failed, reason) }

func TestLeaseBookkeeping(t *testing.T) {
	p := newTestPool(t, RoundRobin, 1, 1, 1)
	var r reports
	var tried Tried
	l, err := p.Lease(&tried, 0, &r)
	if err != nil {
		t.Fatal(err)
	}
	b := l.Backend
	if !tried.Has(b) || b.Active() != 1 {
		t.Fatalf("lease: tried %v, active %d", tried.Has(b), b.Active())
	}
	l.End(nil, true)
	if b.Active() != 0 || b.Requests() != 1 || b.Failures() != 0 || r.ok != 1 {
		t.Fatalf("success: active %d, requests %d, failures %d, reports %+v", b.Active(), b.Requests(), b.Failures(), r)
	}

	// The backend's fault: a failure reported with its reason.
	l, _ = p.Lease(nil, 0, &r)
	l.End(errors.New("connect: refused"), true)
	if got := l.Backend.Failures(); got != 1 || len(r.failed) != 1 || r.failed[0] != "connect: refused" {
		t.Fatalf("failure: %d failures, reports %+v", got, r)
	}

	// Not its fault: counted and recorded, not reported.
	l, _ = p.Lease(nil, 0, &r)
	l.End(errors.New("client went away"), false)
	if got := l.Backend; got.Failures() != 1 || len(r.failed) != 1 || got.LastError() != "client went away" {
		t.Fatalf("excused failure: %d failures, last error %q, reports %+v", got.Failures(), got.LastError(), r)
	}

	// No reporter: counted only.
	l, _ = p.Lease(nil, 0, nil)
	l.End(errors.New("x"), true)
	if got := l.Backend; got.Failures() != 2 || got.LastError() == "x" || got.Active() != 0 {
		t.Fatalf("without reporter: %d failures, last error %q, active %d", got.Failures(), got.LastError(), got.Active())
	}
}

// A lease that ends frees its slot for a request queued for one.
func TestLeaseEndWakesQueue(t *testing.T) {
	p := newTestPool(t, RoundRobin, 1, 1)
	held, err := p.Lease(nil, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := p.Lease(nil, 5*time.Second, nil)
		if err == nil {
			l.End(nil, true)
		}
		got <- err
	}()
	for p.q.waiting.Load() == 0 { // until the second lease waits
		time.Sleep(time.Millisecond)
	}
	held.End(nil, true)
	if err := <-got; err != nil {
		t.Fatalf("queued lease: %v", err)
	}
}

func TestLeaseAllocatesNothing(t *testing.T) {
	p := newTestPool(t, LeastConn, 512, 5, 1, 1, 3)
	var r reports
	got := testing.AllocsPerRun(1000, func() {
		var tried Tried
		l, err := p.Lease(&tried, 0, &r)
		if err != nil {
			t.Fatal(err)
		}
		l.End(nil, true)
	})
	if got != 0 {
		t.Errorf("%v allocations per lease", got)
	}
}

// TestLeaseWithdraw: a withdrawn lease frees its slot and counts the
// request, neither as failed nor reported.
func TestLeaseWithdraw(t *testing.T) {
	p := newTestPool(t, RoundRobin, 1, 1)
	var r reports
	l, err := p.Lease(nil, 0, &r)
	if err != nil {
		t.Fatal(err)
	}
	b := l.Backend
	l.Withdraw()
	if b.Active() != 0 || b.Requests() != 1 || b.Failures() != 0 {
		t.Errorf("active %d, requests %d, failures %d", b.Active(), b.Requests(), b.Failures())
	}
	if r.ok != 0 || len(r.failed) != 0 || b.LastError() != "" {
		t.Errorf("reports %+v, last error %q", r, b.LastError())
	}
}
