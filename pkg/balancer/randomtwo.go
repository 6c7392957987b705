package balancer

import (
	"math/rand/v2"
	"time"
)

// randomTwo is the power of two choices: two backends drawn at random,
// each with a chance in proportion to its weight (draws from the
// round-robin table, where a backend of weight 3 has three entries to
// another's one), and the one with fewer requests in flight per unit of
// weight takes the request. It spreads load almost as evenly as
// least_conn without every pick reading every backend's counter, and
// without least_conn's herd: a backend that has just answered is not
// everyone's choice at once.
func randomTwo(p *Pool, tried *Tried) *Backend {
	seq := *p.rr.table.Load()
	n := len(seq)
	if n == 0 {
		return nil
	}
	var first *Backend
	for range maxDraws {
		b := p.Backends[seq[rand.IntN(n)]]
		if b == first || !p.candidate(b, tried) {
			continue
		}
		if first == nil {
			first = b
			continue
		}
		if lighter(b, first) {
			return b
		}
		return first
	}
	if first != nil {
		// One candidate in maxDraws draws: the others are full, tried or
		// down, or there is only one.
		return first
	}
	return scan(p, tried)
}

// lighter reports whether a has fewer requests in flight per unit of
// weight than b (compared by cross-multiplying).
func lighter(a, b *Backend) bool {
	wa, wb := int64(a.Weight)*weightScale, int64(b.Weight)*weightScale
	if a.slowStart.Load() != 0 || b.slowStart.Load() != 0 {
		now := time.Now()
		wa, wb = a.scaledWeight(now), b.scaledWeight(now)
	}
	return a.active.Load()*wb < b.active.Load()*wa
}
