package balancer

import "math/rand/v2"

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
	i := rand.IntN(n)
	var best *Backend
	var bestActive, bestWeight int64
	for range n {
		b := bs[i]
		if i++; i == n {
			i = 0
		}
		if !p.candidate(b, tried) {
			continue
		}
		a, w := b.active.Load(), int64(b.Weight)
		if best == nil || a*bestWeight < bestActive*w {
			best, bestActive, bestWeight = b, a, w
		}
	}
	return best
}
