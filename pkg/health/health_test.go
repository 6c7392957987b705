package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/config"
)

func testPool(t *testing.T, n int) *balancer.Pool {
	t.Helper()
	bs := make([]*balancer.Backend, n)
	for i := range bs {
		bs[i] = &balancer.Backend{Address: "127.0.0.1:1", Weight: 1}
	}
	p, err := balancer.NewPool("web", balancer.RoundRobin, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func healthCfg(check string) config.Health {
	set, _ := config.ParseStatusSet("200-399")
	return config.Health{
		Check: check, Path: "/healthz",
		Interval: config.Duration{Duration: 20 * time.Millisecond},
		Timeout:  config.Duration{Duration: 200 * time.Millisecond},
		Rise:     2, Fall: 3, Expect: set, PassiveFailures: 3,
	}
}

func TestRiseAndFall(t *testing.T) {
	p := testPool(t, 1)
	b := p.Backends[0]
	m := NewMonitor(p, healthCfg("tcp"), hclog.NewNullLogger())
	fail := errors.New("connect: connection refused")

	steps := []struct {
		err    error
		wantUp bool
	}{
		{nil, true},   // new backends start up
		{fail, true},  // 1 failure
		{fail, true},  // 2
		{nil, true},   // a pass resets the count
		{fail, true},  // 1
		{fail, true},  // 2
		{fail, false}, // 3 = fall: down
		{nil, false},  // 1 pass
		{fail, false}, // failure resets the passes
		{nil, false},  // 1
		{nil, true},   // 2 = rise: up
	}
	for i, s := range steps {
		m.record(b, s.err)
		if b.Up() != s.wantUp {
			t.Fatalf("step %d (%v): up=%v, want %v", i, s.err, b.Up(), s.wantUp)
		}
	}
	if b.LastError() != "" {
		t.Errorf("last error %q after recovery", b.LastError())
	}
}

func TestDownBackendLeavesRotationAndReturns(t *testing.T) {
	p := testPool(t, 2)
	m := NewMonitor(p, healthCfg("tcp"), hclog.NewNullLogger())
	for range 3 {
		m.record(p.Backends[0], errors.New("refused"))
	}
	for range 10 {
		b, err := p.Acquire(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if b == p.Backends[0] {
			t.Fatal("a down backend was picked")
		}
		p.Release(b)
	}
	m.record(p.Backends[0], nil)
	m.record(p.Backends[0], nil)
	seen := false
	for range 10 {
		b, _ := p.Acquire(nil, 0)
		seen = seen || b == p.Backends[0]
		p.Release(b)
	}
	if !seen {
		t.Fatal("a recovered backend is not picked again")
	}
}

func TestPassiveFailures(t *testing.T) {
	p := testPool(t, 1)
	b := p.Backends[0]
	m := NewMonitor(p, healthCfg("tcp"), hclog.NewNullLogger())
	m.ReportFailure(b, "connect: refused")
	m.ReportFailure(b, "connect: refused")
	m.ReportSuccess(b) // an answered request resets the count
	m.ReportFailure(b, "connect: refused")
	m.ReportFailure(b, "connect: refused")
	if !b.Up() {
		t.Fatal("down after 2 consecutive failures; threshold is 3")
	}
	m.ReportFailure(b, "response timeout")
	if b.Up() {
		t.Fatal("still up after 3 consecutive failed requests")
	}
	if b.LastError() != "response timeout" {
		t.Errorf("last error %q", b.LastError())
	}
	// Active checks bring it back after rise passes, not before.
	m.record(b, nil)
	if b.Up() {
		t.Fatal("up after one check")
	}
	m.record(b, nil)
	if !b.Up() {
		t.Fatal("not up after rise checks")
	}
}

func TestPassiveOffAndHoldDown(t *testing.T) {
	p := testPool(t, 1)
	b := p.Backends[0]
	cfg := healthCfg("none")
	cfg.PassiveFailures = 0
	m := NewMonitor(p, cfg, hclog.NewNullLogger())
	for range 10 {
		m.ReportFailure(b, "x")
	}
	if !b.Up() {
		t.Fatal("passive_failures = 0 still marked the backend down")
	}

	// With check = "none" nothing else would raise a passively failed
	// backend, so it comes back after one interval.
	cfg.PassiveFailures = 1
	m = NewMonitor(p, cfg, hclog.NewNullLogger())
	defer m.Stop()
	m.ReportFailure(b, "x")
	if b.Up() {
		t.Fatal("not down")
	}
	deadline := time.Now().Add(2 * time.Second)
	for !b.Up() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !b.Up() {
		t.Fatal("not back up after the hold-down interval")
	}
}

func TestHTTPChecker(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var gotPath, gotHost atomic.Value
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath.Store(r.URL.Path)
		gotHost.Store(r.Host)
		if r.URL.Path == "/slow" {
			time.Sleep(time.Second)
		}
		w.WriteHeader(int(status.Load()))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().String()

	set, _ := config.ParseStatusSet("200-299,301")
	c := &httpChecker{path: "/healthz", expect: set}
	ctx := context.Background()
	for _, tc := range []struct {
		code int
		ok   bool
	}{{200, true}, {204, true}, {301, true}, {302, false}, {404, false}, {503, false}} {
		status.Store(int32(tc.code))
		err := c.check(ctx, addr)
		if (err == nil) != tc.ok {
			t.Errorf("status %d: err=%v, want ok=%v", tc.code, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "status") {
			t.Errorf("error %q does not name the status", err)
		}
	}
	if gotPath.Load() != "/healthz" || gotHost.Load() != addr {
		t.Errorf("check sent path %v host %v", gotPath.Load(), gotHost.Load())
	}
	status.Store(200)
	vhost := &httpChecker{path: "/healthz", host: "www.example.com", expect: set}
	if err := vhost.check(ctx, addr); err != nil || gotHost.Load() != "www.example.com" {
		t.Errorf("check with host: %v, sent Host %v", err, gotHost.Load())
	}

	slow := &httpChecker{path: "/slow", expect: set}
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := slow.check(tctx, addr); err == nil {
		t.Error("a check past its timeout passed")
	}
	if time.Since(start) > 500*time.Millisecond {
		t.Errorf("timeout not honoured: %s", time.Since(start))
	}

	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln2.Addr().String()
	ln2.Close()
	err = c.check(ctx, dead)
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("dead backend: %v", err)
	}
	if err := (tcpChecker{}).check(ctx, dead); err == nil {
		t.Error("tcp check of a dead address passed")
	}
	if err := (tcpChecker{}).check(ctx, addr); err != nil {
		t.Errorf("tcp check of a live address: %v", err)
	}
}

func TestMonitorChecksAtStartAndOnInterval(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var checks atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			checks.Add(1)
			c.Close()
		}
	}()
	defer ln.Close()
	p := testPool(t, 1)
	p.Backends[0].Address = ln.Addr().String()
	cfg := healthCfg("tcp")
	cfg.Interval.Duration = time.Hour
	m := NewMonitor(p, cfg, hclog.NewNullLogger())
	m.Start()
	deadline := time.Now().Add(2 * time.Second)
	for checks.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	m.Stop()
	if checks.Load() != 1 {
		t.Fatalf("%d checks ran at start, want 1 (interval is an hour)", checks.Load())
	}
	if p.Backends[0].LastCheck().IsZero() {
		t.Error("last check time not recorded")
	}
}

// TestSlowStartWeightOne: of two backends of weight 1, one that comes back
// from a passive hold-down with slow_start takes clearly less than half of
// the requests early in its ramp, and half once the ramp is over.
func TestSlowStartWeightOne(t *testing.T) {
	p := testPool(t, 2)
	b := p.Backends[1]
	cfg := healthCfg("none")
	cfg.PassiveFailures = 1
	cfg.SlowStart = config.Duration{Duration: 2 * time.Second}
	m := NewMonitor(p, cfg, hclog.NewNullLogger())
	m.Start()
	defer m.Stop()
	m.ReportFailure(b, "x")
	deadline := time.Now().Add(2 * time.Second)
	for !b.Up() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if !b.Up() || !b.SlowStarting() {
		t.Fatalf("not back up in slow start: up %v, slow start %v", b.Up(), b.SlowStarting())
	}
	share := func() float64 {
		n := 0
		for range 1000 {
			x, err := p.Acquire(nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			if x == b {
				n++
			}
			p.Release(x)
		}
		return float64(n) / 1000
	}
	// Within the first quarter of the ramp its weight is at most 4/16 of
	// a weight of 1: a share of at most 0.2 against 0.5 at full weight.
	if s := share(); s > 0.3 {
		t.Errorf("early in its ramp the recovering backend took %.2f of the requests", s)
	}
	deadline = time.Now().Add(5 * time.Second)
	for b.SlowStarting() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := share(); s != 0.5 {
		t.Errorf("after its ramp the recovered backend took %.2f of the requests, want 0.5", s)
	}
}
