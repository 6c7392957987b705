package policy

import (
	"math"
	"net/netip"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/atomic"
)

// Limiter is a token bucket per client address: each address may spend
// Rate tokens a second, and save up to Burst. Its memory is fixed when it
// is made, whatever the number of addresses: buckets live in a table of
// sets of limiterWays entries, an address hashes to one set, and a new
// address takes the way least recently used. An address evicted so comes
// back with a full bucket, which errs on letting a client in: it takes an
// attacker more addresses than the table holds (tableSets*limiterWays,
// 65,536) to make a client's bucket forgotten. Its methods are safe for
// concurrent use.
type Limiter struct {
	rate  float64 // tokens a second
	burst float64
	sets  []limiterSet
	mask  uint64
	// Listener and Route name what the limiter limits, for metrics
	// (Route "" for a listener's own limits).
	Listener, Route string
	// Limited counts the requests refused; the caller counts them.
	Limited atomic.Uint64
}

// limiterWays is how many addresses share a set; tableSets how many
// sets a Limiter has.
const (
	limiterWays = 4
	tableSets   = 1 << 14
)

type limiterSet struct {
	mu   sync.Mutex
	ways [limiterWays]bucket
}

type bucket struct {
	addr   [16]byte
	used   bool
	tokens float64
	last   int64 // unix nanoseconds of the last refill
}

// NewLimiter makes a limiter of rate tokens a second and bursts of burst.
func NewLimiter(rate float64, burst int) *Limiter {
	return &Limiter{rate: rate, burst: float64(max(burst, 1)), sets: make([]limiterSet, tableSets), mask: tableSets - 1}
}

// Rate and Burst are the limiter's settings.
func (l *Limiter) Rate() float64 { return l.rate }
func (l *Limiter) Burst() int    { return int(l.burst) }

// Allow takes a token of a's bucket at now and reports whether there was
// one; when there was not, wait is how long until there is. A nil
// limiter allows everything. It allocates nothing.
func (l *Limiter) Allow(a netip.Addr, now time.Time) (ok bool, wait time.Duration) {
	if l == nil {
		return true, 0
	}
	key := a.Unmap().As16()
	s := &l.sets[xxhash.Sum64(key[:])&l.mask]
	t := now.UnixNano()
	s.mu.Lock()
	b := s.find(key, t)
	if b.used {
		b.tokens = math.Min(l.burst, b.tokens+float64(t-b.last)*l.rate/1e9)
	} else {
		*b = bucket{addr: key, used: true, tokens: l.burst}
	}
	b.last = t
	if b.tokens >= 1 {
		b.tokens--
		s.mu.Unlock()
		return true, 0
	}
	need := 1 - b.tokens
	s.mu.Unlock()
	return false, time.Duration(need / l.rate * 1e9)
}

// find returns key's way of s, or the one to give it: an unused one, or
// the least recently refilled.
func (s *limiterSet) find(key [16]byte, now int64) *bucket {
	victim := &s.ways[0]
	for i := range s.ways {
		w := &s.ways[i]
		if w.used && w.addr == key {
			return w
		}
		if !w.used {
			if victim.used {
				victim = w
			}
			continue
		}
		if victim.used && w.last < victim.last {
			victim = w
		}
	}
	victim.used = false
	return victim
}

// RetryAfter is the Retry-After value for a wait: whole seconds, at
// least 1.
func RetryAfter(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}
