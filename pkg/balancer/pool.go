package balancer

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/atomic"
)

var (
	// ErrNoBackend means no backend of the pool is up, undrained and
	// untried: the caller answers 503 (or 502 after failed attempts).
	ErrNoBackend = errors.New("balancer: no backend available")
	// ErrQueueTimeout means every usable backend stayed at
	// max_conns_per_backend for the whole wait.
	ErrQueueTimeout = errors.New("balancer: all backends at their connection limit")
)

// Algorithm names, as written in the config.
const (
	RoundRobin = "round_robin"
	LeastConn  = "least_conn"
	// RandomTwo picks two backends at random (by weight) and takes the
	// one with fewer requests in flight per unit of weight.
	RandomTwo = "random_two"
	// LeastTime takes the backend with the lowest peak-EWMA response
	// time times requests in flight, per unit of weight.
	LeastTime = "least_time"
	// Hash maps each request's key (Tried.SetKey) onto a consistent-hash
	// ring; requests without a key go round robin.
	Hash = "hash"
)

// algorithm is Pool.Algorithm as a number, for the switch on every pick.
type algorithm uint8

const (
	algRoundRobin algorithm = iota
	algLeastConn
	algRandomTwo
	algLeastTime
	algHash
)

// Pool is a set of backends and the policy that picks among them. A Pool is
// built once, by NewPool (the zero value is not usable), and never
// changes shape; backends' live states change under it. All methods are
// safe for concurrent use.
type Pool struct {
	Name      string
	Algorithm string
	Backends  []*Backend
	// MaxConns is the limit of requests in flight per backend, 0 for none.
	MaxConns int64
	// HashBalance bounds the load of algorithm hash (consistent hashing
	// with bounded loads): a backend above HashBalance times the mean
	// requests in flight per unit of weight passes its keys on along the
	// ring. 0 is no bound. Set before the pool serves.
	HashBalance float64

	// The round-robin table is always kept: round robin picks from it,
	// random_two draws from it, and hash falls back on it for requests
	// without a key. The other selectors are set for their algorithm.
	// They are concrete types, not an interface, so that a *Tried on the
	// caller's stack stays there.
	alg  algorithm
	rr   *roundRobin
	lc   *leastConn
	lt   *leastTime
	ring *hashRing
	q    *waitQueue

	// hasBackup is set when some backend is a backup; backupTier while
	// no other backend is usable, so that backups serve (Refresh keeps it).
	hasBackup  bool
	backupTier atomic.Bool
}

// waitQueue is where requests wait for a backend slot. Pools of successive
// configs with the same name share one (ShareQueue), as they share their
// backends' states: a slot freed by a request of either config wakes
// requests waiting in both.
type waitQueue struct {
	// Every Release reads waiting: the padding keeps it off cache lines
	// that neighbouring objects write on each request (a round-robin
	// counter is just as small and often allocated next to it).
	_       [64]byte
	waiting atomic.Int32
	// freed is closed (and replaced) when a slot frees while requests
	// wait, waking them all: each looks for a backend it can use.
	mu    sync.Mutex
	freed chan struct{}
	_     [64]byte
}

// NewPool builds a pool. Each backend's Index is set to its position; a
// backend without a State gets a new one (up).
func NewPool(name, algorithm string, backends []*Backend, maxConns int) (*Pool, error) {
	p := &Pool{
		Name:      name,
		Algorithm: algorithm,
		Backends:  backends,
		MaxConns:  int64(maxConns),
		q:         &waitQueue{freed: make(chan struct{})},
	}
	p.rr = &roundRobin{}
	switch algorithm {
	case RoundRobin, "":
		p.Algorithm = RoundRobin
	case LeastConn:
		p.alg, p.lc = algLeastConn, &leastConn{}
	case RandomTwo:
		p.alg = algRandomTwo
	case LeastTime:
		p.alg, p.lt = algLeastTime, &leastTime{}
	case Hash:
		p.alg = algHash
	default:
		return nil, fmt.Errorf("balancer: unknown algorithm %q", algorithm)
	}
	for i, b := range backends {
		b.Index = i
		if b.State == nil {
			b.State = NewState()
		}
		p.hasBackup = p.hasBackup || b.Backup
	}
	if p.alg == algHash {
		p.ring = newHashRing(backends)
	}
	p.Refresh()
	return p, nil
}

// ShareQueue makes p queue requests with old's, so that a slot freed by a
// request of either pool wakes requests waiting in both. A reload calls
// it for the pool that replaces old (same name, backends' states carried
// over), before p serves.
func (p *Pool) ShareQueue(old *Pool) { p.q = old.q }

// Refresh must be called after a backend of the pool goes up or down or is
// drained or enabled, so that precomputed selection tables follow.
func (p *Pool) Refresh() {
	p.rr.refresh(p)
}

// refreshTier sets which backends serve: the backups while no other
// backend is usable. The round-robin refresh calls it under its lock, so
// that refreshes racing on different goroutines (health checks, drains,
// slow starts) store the tier in the order they store the table.
func (p *Pool) refreshTier() {
	if !p.hasBackup {
		return
	}
	primary := false
	for _, b := range p.Backends {
		if !b.Backup && b.Usable() && b.Weight > 0 {
			primary = true
			break
		}
	}
	p.backupTier.Store(!primary)
}

// HasBackups reports whether some backend of the pool is a backup.
func (p *Pool) HasBackups() bool { return p.hasBackup }

// BackupsServing reports whether the pool's backups are taking requests,
// no other backend being usable.
func (p *Pool) BackupsServing() bool { return p.hasBackup && p.backupTier.Load() }

// inTier reports whether b belongs to the backends now serving: the
// backups while no other backend is usable, the others otherwise.
func (p *Pool) inTier(b *Backend) bool {
	return !p.hasBackup || b.Backup == p.backupTier.Load()
}

// next picks a candidate: a usable, untried backend under the connection
// limit, or nil. It does not count the pick; Acquire does.
func (p *Pool) next(tried *Tried) *Backend {
	switch p.alg {
	case algLeastConn:
		return p.lc.next(p, tried)
	case algRandomTwo:
		return randomTwo(p, tried)
	case algLeastTime:
		return p.lt.next(p, tried)
	case algHash:
		if tried != nil && tried.keyed {
			return p.ring.next(p, tried)
		}
	}
	return p.rr.next(p, tried)
}

// Usable is the number of backends that are up and not drained.
func (p *Pool) Usable() int {
	n := 0
	for _, b := range p.Backends {
		if b.Usable() {
			n++
		}
	}
	return n
}

// SlowStarting reports whether any backend's weight is ramping up.
func (p *Pool) SlowStarting() bool {
	for _, b := range p.Backends {
		if b.SlowStarting() {
			return true
		}
	}
	return false
}

// Backend returns the backend with that address, or nil.
func (p *Pool) Backend(addr string) *Backend {
	for _, b := range p.Backends {
		if b.Address == addr {
			return b
		}
	}
	return nil
}

// candidate reports whether b may take a new request now.
func (p *Pool) candidate(b *Backend, tried *Tried) bool {
	return b.Usable() && b.Weight > 0 && p.inTier(b) &&
		(p.MaxConns <= 0 || b.active.Load() < p.MaxConns) &&
		!tried.Has(b)
}

// Acquire picks a backend not in tried and counts one request in flight on
// it; the caller must call Release when the request is done. When every
// usable backend is at MaxConns it waits up to wait for a slot (like
// HAProxy's queue), then fails with ErrQueueTimeout. With no usable
// backend left it fails at once with ErrNoBackend.
func (p *Pool) Acquire(tried *Tried, wait time.Duration) (*Backend, error) {
	if b := p.tryAcquire(tried); b != nil {
		return b, nil
	}
	if p.MaxConns <= 0 || !p.anyUsable(tried) {
		return nil, ErrNoBackend
	}
	return p.queue(tried, wait)
}

func (p *Pool) tryAcquire(tried *Tried) *Backend {
	// A pick can lose the race for a backend's last slot; try a few times.
	for range 4 {
		b := p.next(tried)
		if b == nil {
			return nil
		}
		if b.tryAcquire(p.MaxConns) {
			return b
		}
	}
	return nil
}

// anyUsable reports whether some untried backend could take a request if
// it had a free slot.
func (p *Pool) anyUsable(tried *Tried) bool {
	for _, b := range p.Backends {
		if b.Usable() && b.Weight > 0 && p.inTier(b) && !tried.Has(b) {
			return true
		}
	}
	return false
}

func (p *Pool) queue(tried *Tried, wait time.Duration) (*Backend, error) {
	return p.waitFor(wait, func() (*Backend, bool) {
		if b := p.tryAcquire(tried); b != nil {
			return b, true
		}
		return nil, p.anyUsable(tried)
	})
}

// waitFor waits up to wait for a slot: take tries to take one, and
// returns the backend it took it on, or nil and whether a freed slot
// could still be of use (false ends the wait with ErrNoBackend).
func (p *Pool) waitFor(wait time.Duration, take func() (*Backend, bool)) (*Backend, error) {
	if wait <= 0 {
		return nil, ErrQueueTimeout
	}
	q := p.q
	q.waiting.Inc()
	defer q.waiting.Dec()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		// Take the wake-up channel before looking, so that a slot freed
		// between the look and the wait still wakes this request.
		q.mu.Lock()
		freed := q.freed
		q.mu.Unlock()
		b, ok := take()
		if b != nil {
			return b, nil
		}
		if !ok {
			return nil, ErrNoBackend
		}
		select {
		case <-freed:
		case <-timer.C:
			return nil, ErrQueueTimeout
		}
	}
}

// Release ends a request counted by Acquire. It wakes requests waiting
// for a slot, in this pool or one sharing its queue (whatever its own
// limit: the waiters' pool has one).
func (p *Pool) Release(b *Backend) {
	b.active.Dec()
	if q := p.q; q.waiting.Load() > 0 {
		q.mu.Lock()
		close(q.freed)
		q.freed = make(chan struct{})
		q.mu.Unlock()
	}
}

// MaxTried is the most backends one request can try: the first attempt
// and up to 16 retries.
const MaxTried = 17

// Tried is the set of backends a request has already tried, so that a
// retry goes elsewhere. The zero value is empty, and so is a nil *Tried;
// it lives on the stack of the one request it serves, which alone uses it.
type Tried struct {
	n   int
	idx [MaxTried]int32
	// The request's key for algorithm hash, when it has one.
	key   uint64
	keyed bool
}

// SetKey gives the request its key for algorithm hash (a hash of its
// client address, URI, header or cookie; see HashKey). A request without
// one goes round robin.
func (t *Tried) SetKey(key uint64) { t.key, t.keyed = key, true }

// Add records b as tried. Beyond MaxTried entries it records nothing.
func (t *Tried) Add(b *Backend) {
	if t.n < MaxTried {
		t.idx[t.n] = int32(b.Index)
		t.n++
	}
}

// Has reports whether b was tried. A nil *Tried is empty.
func (t *Tried) Has(b *Backend) bool {
	return t != nil && slices.Contains(t.idx[:t.n], int32(b.Index))
}
