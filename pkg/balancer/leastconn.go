package balancer

import (
	"math/rand/v2"
	"time"
)

// leastConn picks the candidate with the fewest requests in flight
// relative to its weight (active/weight, compared by cross-multiplying).
// The scan starts at a random backend, so ties go to each tied backend
// equally often rather than always to the first.
type leastConn struct{}

func (*leastConn) next(p *Pool, tried *Tried) *Backend {
	bs := p.Backends
	n := len(bs)
	if n == 0 {
		return nil
	}
	i := int(rand.Uint32N(uint32(n)))
	var best *Backend
	var bestActive, bestWeight int64
	for range n {
		b := bs[i]
		if i++; i == n {
			i = 0
		}
		// candidate, with active loaded once for both uses.
		if b.Weight <= 0 || !b.Usable() || !p.inTier(b) {
			continue
		}
		a := b.active.Load()
		if p.MaxConns > 0 && a >= p.MaxConns || tried.Has(b) {
			continue
		}
		w := int64(b.Weight) * weightScale
		if b.slowStart.Load() != 0 {
			w = b.scaledWeight(time.Now())
		}
		if best == nil || a*bestWeight < bestActive*w {
			best, bestActive, bestWeight = b, a, w
		}
	}
	return best
}
