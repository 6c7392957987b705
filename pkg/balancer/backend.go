// Package balancer holds pools of backends, their live state, and the
// algorithms that pick one backend per request or connection.
//
// Nothing here knows about HTTP: the L7 proxy and the L4 proxy share it.
// Picking is lock-free and allocates nothing. Locks are taken only to
// rebuild a pool's round-robin table after a health or drain change, and
// by requests that wait for a backend slot and the releases that wake
// them.
package balancer

import (
	"math"
	"time"

	"go.uber.org/atomic"
)

// Backend is one server of a pool: its settings, fixed when the pool is
// built and then read without locks, and a pointer to its live State,
// which may outlive the pool (a reload carries the State of a backend
// that stays over to the new pool). NewPool gives a Backend without a
// State a new one.
type Backend struct {
	Address string
	Weight  int
	// Backup backends take requests only while no other backend of the
	// pool is usable (up and not drained).
	Backup bool
	// Index is the backend's position in its pool's Backends.
	Index int
	*State
}

// State is the live state of a backend. All its methods are safe for
// concurrent use. NewState returns one that is up, as a new backend
// counts as up until its first check says otherwise; the zero value is up
// too, but has no Changed time.
type State struct {
	// Read on every pick, written rarely: flag* bits, 0 when the backend
	// may take requests (one load per backend and pick).
	flags atomic.Uint32
	_     [64]byte // keep the counters below off the read-mostly line

	// Written on every request.
	active   atomic.Int64
	requests atomic.Uint64
	failures atomic.Uint64
	latency  atomic.Uint64 // nanoseconds, summed over answered requests
	// The peak-EWMA of response times (least_time): a float64's bits, in
	// nanoseconds, and when it was last moved (unix nanoseconds).
	ewma   atomic.Uint64
	ewmaAt atomic.Int64
	_      [64]byte

	// Slow start: when the ramp began (unix nanoseconds, 0 for none) and
	// how long it lasts.
	slowStart atomic.Int64
	slowLen   atomic.Int64

	// Health bookkeeping, written by pkg/health.
	checkPasses  atomic.Int32
	checkFails   atomic.Int32
	passiveFails atomic.Int32
	lastError    atomic.String
	lastCheck    atomic.Time
	changed      atomic.Time
	// Passive hold-down (pools without active checks): when it ends (unix
	// nanoseconds) and which health monitor brings the backend back.
	holdUntil atomic.Int64
	holdOwner atomic.Uint64
}

// State.flags bits.
const (
	flagDown    = 1 << iota // health checking considers the backend dead
	flagDrained             // the operator took it out of rotation
)

// NewState returns the state of a new backend: up, with no history.
func NewState() *State {
	s := &State{}
	s.changed.Store(time.Now())
	return s
}

// Up reports whether health checking considers the backend alive.
func (s *State) Up() bool { return s.flags.Load()&flagDown == 0 }

// SetUp records the health verdict and reports whether it changed. Exactly
// one of several racing callers that set the same new value sees true, so
// a transition is logged and counted once.
func (s *State) SetUp(up bool) bool {
	if !s.setFlag(flagDown, !up) {
		return false
	}
	s.changed.Store(time.Now())
	return true
}

// Drained reports whether the operator took the backend out of rotation.
func (s *State) Drained() bool { return s.flags.Load()&flagDrained != 0 }

// SetDrained takes the backend out of rotation (in-flight requests finish)
// or puts it back, and reports whether that changed anything.
func (s *State) SetDrained(d bool) bool { return s.setFlag(flagDrained, d) }

// Usable reports whether the backend may take new requests: up and not
// drained.
func (s *State) Usable() bool { return s.flags.Load() == 0 }

// setFlag sets or clears a flag and reports whether that changed it; of
// racing callers making the same change, one sees true.
func (s *State) setFlag(flag uint32, on bool) bool {
	for {
		old := s.flags.Load()
		v := old &^ flag
		if on {
			v |= flag
		}
		if v == old {
			return false
		}
		if s.flags.CompareAndSwap(old, v) {
			return true
		}
	}
}

// Active is the number of requests (or connections) in flight.
func (s *State) Active() int64 { return s.active.Load() }

// Requests is the number of requests sent to the backend.
func (s *State) Requests() uint64 { return s.requests.Load() }

// Failures is the number of requests to the backend that failed.
func (s *State) Failures() uint64 { return s.failures.Load() }

// CountRequest records one request sent to the backend, and whether it
// failed.
func (s *State) CountRequest(failed bool) {
	s.requests.Inc()
	if failed {
		s.failures.Inc()
	}
}

// ObserveLatency adds the duration of one answered request to the
// backend's total.
func (s *State) ObserveLatency(d time.Duration) {
	if d > 0 {
		s.latency.Add(uint64(d))
	}
}

// ObserveTime moves the backend's peak-EWMA (algorithm least_time) with
// the time one attempt on it took, which ended at now.
func (s *State) ObserveTime(d time.Duration, now time.Time) {
	if d > 0 {
		s.observeEWMA(float64(d), now.UnixNano())
	}
}

// ewmaDecay is how fast the peak-EWMA forgets: an observation's weight
// falls to 1/e after this long (Finagle's and Linkerd's default). A
// response slower than the average raises it at once (the peak); faster
// ones bring it down with this decay.
const ewmaDecay = 10 * time.Second

// observeEWMA moves the peak-EWMA toward rtt (nanoseconds) seen at now.
func (s *State) observeEWMA(rtt float64, now int64) {
	for {
		old := s.ewma.Load()
		cost := math.Float64frombits(old)
		next := rtt
		if rtt < cost {
			w := math.Exp(-float64(max(0, now-s.ewmaAt.Load())) / float64(ewmaDecay))
			next = cost*w + rtt*(1-w)
		}
		if s.ewma.CompareAndSwap(old, math.Float64bits(next)) {
			s.ewmaAt.Store(now)
			return
		}
	}
}

// LatencyEWMA is the backend's peak-EWMA response time at now (decayed
// since the last answer), 0 before its first answer.
func (s *State) LatencyEWMA(now time.Time) time.Duration {
	return time.Duration(s.ewmaCost(now.UnixNano()))
}

// ewmaCost is the peak-EWMA decayed toward zero for the time since the
// last answer, so that a backend that was slow and then got no requests
// is tried again in time (as Finagle's does).
func (s *State) ewmaCost(now int64) float64 {
	cost := math.Float64frombits(s.ewma.Load())
	if cost == 0 {
		return 0
	}
	return cost * math.Exp(-float64(max(0, now-s.ewmaAt.Load()))/float64(ewmaDecay))
}

// LatencySum is the total duration of answered requests; divided by the
// change in Requests over an interval it gives the average latency.
func (s *State) LatencySum() time.Duration { return time.Duration(s.latency.Load()) }

// StartSlowStart begins ramping the backend's weight from small to full
// over d (nothing for d <= 0).
func (s *State) StartSlowStart(d time.Duration) {
	if d <= 0 {
		return
	}
	s.slowLen.Store(int64(d))
	s.slowStart.Store(time.Now().UnixNano())
}

// SlowStarting reports whether the backend's weight is ramping up.
func (s *State) SlowStarting() bool { return s.slowStart.Load() != 0 }

// weightScale is how many internal weight units one configured weight
// unit is worth. Picks use scaled weights so that a slow start can ramp
// in steps finer than a whole unit: a backend of weight 1 starts at 1/16
// of its share rather than all of it (HAProxy scales by 16 for the same
// reason).
const weightScale = 16

// EffectiveWeight is the weight a pick uses, in configured units: Weight,
// or during slow start a share of it growing with the time since the ramp
// began, rounded up (at least 1). Picks use the finer scaledWeight.
func (b *Backend) EffectiveWeight(now time.Time) int {
	return int((b.scaledWeight(now) + weightScale - 1) / weightScale)
}

// scaledWeight is the weight a pick uses, in units of 1/weightScale:
// Weight*weightScale, or during slow start that times the fraction of the
// ramp done, rounded up (at least 1, so a ramping backend is never left
// out).
func (b *Backend) scaledWeight(now time.Time) int64 {
	full := int64(b.Weight) * weightScale
	start := b.slowStart.Load()
	if start == 0 || full == 0 {
		return full
	}
	length := b.slowLen.Load()
	elapsed := now.UnixNano() - start
	if elapsed >= length || length <= 0 {
		b.slowStart.CompareAndSwap(start, 0)
		return full
	}
	// In floating point: full*elapsed overflows int64 for ramps of weeks.
	return max(1, int64(math.Ceil(float64(full)*float64(elapsed)/float64(length))))
}

// LastError is the reason of the last failed check or request, "" after a
// success.
func (s *State) LastError() string { return s.lastError.Load() }

// SetLastError records the reason of the last failure ("" clears it). It
// writes only on change, to keep the shared cache line quiet on the hot
// path.
func (s *State) SetLastError(e string) {
	if s.lastError.Load() != e {
		s.lastError.Store(e)
	}
}

// LastCheck is when the last active check finished (zero if none ran).
func (s *State) LastCheck() time.Time { return s.lastCheck.Load() }

// Changed is when the backend last went up or down.
func (s *State) Changed() time.Time { return s.changed.Load() }

// CheckCounters exposes the consecutive active-check pass and failure
// counters and the consecutive passive failure counter to pkg/health.
func (s *State) CheckCounters() (passes, fails, passive *atomic.Int32) {
	return &s.checkPasses, &s.checkFails, &s.passiveFails
}

// HoldDown exposes to pkg/health when a passive hold-down ends (unix
// nanoseconds) and the id of the monitor that ends it (0 for none). They
// live here, with the up flag they guard, so that a reload hands them to
// the new config's monitor along with the rest of the state.
func (s *State) HoldDown() (until *atomic.Int64, owner *atomic.Uint64) {
	return &s.holdUntil, &s.holdOwner
}

// MarkChecked records the time of a finished active check.
func (s *State) MarkChecked(t time.Time) { s.lastCheck.Store(t) }

// tryAcquire counts one more request in flight if that keeps the backend
// within max (0 = no limit).
func (s *State) tryAcquire(max int64) bool {
	if max <= 0 {
		s.active.Inc()
		return true
	}
	for {
		n := s.active.Load()
		if n >= max {
			return false
		}
		if s.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}
