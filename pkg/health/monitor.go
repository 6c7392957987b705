// Package health decides whether backends are up: active checks on a
// ticker (HTTP or TCP) with rise/fall thresholds, and passive counting of
// failed proxied requests. Verdicts are stored in each backend's
// balancer.State; a transition is made by compare-and-swap, so it is
// logged exactly once, with its reason.
package health

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/atomic"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/config"
)

// checker runs one active check against a backend address.
type checker interface {
	check(ctx context.Context, addr string) error
}

// Monitor checks the backends of one pool. Build it with NewMonitor; the
// zero value is not usable. It is safe for concurrent use: the proxy
// reports passive results to it while its goroutines check.
type Monitor struct {
	id      uint64 // unique, claims hold-downs in balancer.State
	pool    *balancer.Pool
	cfg     config.Health
	log     hclog.Logger
	checker checker // nil when check = "none"

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// mu guards stopped and wg.Add after Start, against Stop's Wait.
	mu      sync.Mutex
	stopped bool
}

// A Monitor takes the passive reports of the leases on its pool's
// backends.
var _ balancer.Reporter = (*Monitor)(nil)

// monitorIDs numbers monitors, so that a hold-down names its owner.
var monitorIDs atomic.Uint64

// NewMonitor returns a monitor for pool; Start begins checking.
func NewMonitor(pool *balancer.Pool, cfg config.Health, log hclog.Logger) *Monitor {
	m := &Monitor{id: monitorIDs.Inc(), pool: pool, cfg: cfg, log: log.Named("health").With("pool", pool.Name)}
	switch cfg.Check {
	case "http":
		m.checker = &httpChecker{path: cfg.Path, host: cfg.Host, expect: cfg.Expect}
	case "tcp":
		m.checker = tcpChecker{}
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// Start runs the first check of every backend at once, then one every
// interval, each backend on its own goroutine, until Stop. With
// slow_start it also keeps the pool's weights following the ramps.
//
// It takes over backends that are down (a reload carries their state
// over): with active checks, those checks raise them; without, a
// hold-down raises them when the one under way ends, or at once if none
// is (nothing else would).
func (m *Monitor) Start() {
	if m.cfg.SlowStart.Duration > 0 {
		m.wg.Add(1)
		go m.ramp()
	}
	for _, b := range m.pool.Backends {
		if b.Up() {
			continue
		}
		_, owner := b.HoldDown()
		owner.Store(m.id)
		if m.checker == nil {
			m.wg.Add(1)
			go m.holdDown(b)
		}
	}
	if m.checker == nil {
		return
	}
	for _, b := range m.pool.Backends {
		m.wg.Add(1)
		go m.loop(b)
	}
}

// ramp refreshes the pool while a backend's weight ramps up, so that the
// round-robin table follows the effective weights: about 20 steps per
// slow start.
func (m *Monitor) ramp() {
	defer m.wg.Done()
	step := max(m.cfg.SlowStart.Duration/20, 50*time.Millisecond)
	t := time.NewTicker(step)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
			if m.pool.SlowStarting() {
				m.pool.Refresh()
			}
		}
	}
}

// up marks b up after it was down, starting its slow start.
func (m *Monitor) up(b *balancer.Backend, reason string) {
	_, _, passive := b.CheckCounters()
	passive.Store(0)
	b.SetLastError("")
	b.StartSlowStart(m.cfg.SlowStart.Duration)
	m.log.Info("backend is up", "backend", b.Address, "reason", reason)
	m.pool.Refresh()
}

// Stop ends all checks and waits for them to return.
func (m *Monitor) Stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

func (m *Monitor) loop(b *balancer.Backend) {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.Interval.Duration)
	defer t.Stop()
	for {
		m.checkOnce(b)
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkOnce runs one active check of b and records its result.
func (m *Monitor) checkOnce(b *balancer.Backend) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("health check panicked", "backend", b.Address, "panic", r)
		}
	}()
	ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout.Duration)
	err := m.checker.check(ctx, b.Address)
	cancel()
	if m.ctx.Err() != nil {
		return // stopping: the result means nothing
	}
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("no answer within %s", m.cfg.Timeout.Duration)
	}
	b.MarkChecked(time.Now())
	m.record(b, err)
}

// record applies one active check result to the rise/fall state machine.
func (m *Monitor) record(b *balancer.Backend, err error) {
	passes, fails, _ := b.CheckCounters()
	if err == nil {
		fails.Store(0)
		n := passes.Inc()
		if b.Up() {
			b.SetLastError("")
			return
		}
		if int(n) >= m.cfg.Rise && b.SetUp(true) {
			m.up(b, fmt.Sprintf("%d consecutive checks passed", n))
		}
		return
	}
	passes.Store(0)
	n := fails.Inc()
	b.SetLastError(err.Error())
	if b.Up() && int(n) >= m.cfg.Fall && b.SetUp(false) {
		m.log.Warn("backend is down", "backend", b.Address,
			"reason", fmt.Sprintf("%d consecutive checks failed, last: %v", n, err))
		m.pool.Refresh()
	}
}

// ReportSuccess records a proxied request that b answered.
func (m *Monitor) ReportSuccess(b *balancer.Backend) {
	if m.cfg.PassiveFailures <= 0 {
		return
	}
	if _, _, passive := b.CheckCounters(); passive.Load() != 0 {
		passive.Store(0)
	}
}

// ReportFailure records a proxied request that b failed (it refused the
// connection, broke it, timed out or answered garbage). After
// passive_failures in a row the backend goes down until active checks
// raise it again (with check = "none", until one interval has passed).
func (m *Monitor) ReportFailure(b *balancer.Backend, reason string) {
	b.SetLastError(reason)
	if m.cfg.PassiveFailures <= 0 {
		return
	}
	if m.checker == nil {
		// Without active checks the hold-down that raises the backend
		// again is this monitor's: a stopped one (a reload replaced it)
		// leaves the verdict to the current config's monitor, which
		// shares the failure counter.
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.stopped {
			return
		}
	}
	passes, _, passive := b.CheckCounters()
	n := passive.Inc()
	if int(n) < m.cfg.PassiveFailures || !b.SetUp(false) {
		return
	}
	passes.Store(0)
	m.log.Warn("backend is down", "backend", b.Address,
		"reason", fmt.Sprintf("%d consecutive requests failed, last: %s", n, reason))
	m.pool.Refresh()
	if m.checker == nil {
		until, owner := b.HoldDown()
		until.Store(time.Now().Add(m.cfg.Interval.Duration).UnixNano())
		owner.Store(m.id)
		m.wg.Add(1)
		go m.holdDown(b)
	}
}

// holdDown brings a passively failed backend back when its hold-down ends
// (one interval after it went down, as NGINX's fail_timeout does), when
// there are no active checks to do it. The hold-down belongs to the
// backend's state: if a newer monitor has claimed it, that one ends it; if
// this monitor stops while it still owns it, it raises the backend now
// rather than leave it down with nothing to raise it.
func (m *Monitor) holdDown(b *balancer.Backend) {
	defer m.wg.Done()
	until, owner := b.HoldDown()
	t := time.NewTimer(time.Until(time.Unix(0, until.Load())))
	defer t.Stop()
	reason := "passive hold-down expired (no active checks)"
	select {
	case <-m.ctx.Done():
		reason = "passive hold-down ended early: its health monitor stopped"
	case <-t.C:
	}
	if !owner.CompareAndSwap(m.id, 0) {
		return
	}
	_, _, passive := b.CheckCounters()
	passive.Store(0)
	if b.SetUp(true) {
		m.up(b, reason)
	}
}
