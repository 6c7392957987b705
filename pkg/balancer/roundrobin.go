package balancer

import (
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/atomic"
)

// roundRobin is NGINX's smooth weighted round-robin, precomputed: refresh
// runs the algorithm once over the usable backends' effective weights and
// stores the resulting cycle (weights 5,1,1 give a a b a c a a), and a
// pick is one atomic increment indexing into it. Only refresh takes a
// lock. During a slow start the pool is refreshed as the weight ramps.
type roundRobin struct {
	mu      sync.Mutex // serialises refresh
	table   atomic.Pointer[[]int32]
	counter atomic.Uint64
}

// maxDraws bounds how many cycle positions one pick tries before falling
// back to a scan (entries can be tried, full, or just gone down).
const maxDraws = 8

func (r *roundRobin) next(p *Pool, tried *Tried) *Backend {
	seq := *r.table.Load()
	if len(seq) == 0 {
		return nil
	}
	n := uint64(len(seq))
	for range maxDraws {
		b := p.Backends[seq[(r.counter.Inc()-1)%n]]
		if p.candidate(b, tried) {
			return b
		}
	}
	return scan(p, tried)
}

// scan returns any candidate, starting at a random backend.
func scan(p *Pool, tried *Tried) *Backend {
	n := len(p.Backends)
	if n == 0 {
		return nil
	}
	start := rand.IntN(n)
	for i := range n {
		b := p.Backends[(start+i)%n]
		if p.candidate(b, tried) {
			return b
		}
	}
	return nil
}

func (r *roundRobin) refresh(p *Pool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.refreshTier()
	weights := make([]int, len(p.Backends))
	now := time.Now()
	for i, b := range p.Backends {
		if b.Usable() && p.inTier(b) {
			weights[i] = int(b.scaledWeight(now))
		}
	}
	seq := smoothSequence(boundCycle(weights, maxCycle))
	r.table.Store(&seq)
}

// maxCycle bounds the length of a round-robin cycle. Scaled weights make
// long cycles during a slow start (weights 256 and 1/16 of 256 have no
// common divisor), and building one costs its length times the number of
// backends; past this length the weights are divided down together (each
// off by less than one of its new units), keeping refreshes cheap in pools
// of many heavy backends.
const maxCycle = 1 << 16

// boundCycle divides weights down in place, if needed, so that one cycle
// of smoothSequence is at most about limit (plus one per backend) long; a
// weight above zero stays above zero.
func boundCycle(weights []int, limit int) []int {
	g, total := 0, 0
	for _, w := range weights {
		g = gcd(g, w)
		total += w
	}
	if g == 0 || total/g <= limit {
		return weights
	}
	div := (total/g + limit - 1) / limit * g
	for i, w := range weights {
		if w > 0 {
			weights[i] = max(1, w/div)
		}
	}
	return weights
}

// smoothSequence returns one cycle of NGINX's smooth weighted round-robin
// over weights (indexes of entries with weight 0 never appear). Each step
// adds every weight to its entry's current value, picks the largest, and
// subtracts the total from it; after sum(weights)/gcd steps the currents
// are back to zero, so the cycle repeats exactly.
// https://github.com/phusion/nginx/commit/27e94984486058d73157038f7950a0a36ecc6e35
func smoothSequence(weights []int) []int32 {
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	if g == 0 {
		return nil
	}
	total := 0
	w := make([]int, len(weights))
	for i, x := range weights {
		w[i] = x / g
		total += w[i]
	}
	cur := make([]int, len(w))
	seq := make([]int32, 0, total)
	for range total {
		best := -1
		for i, x := range w {
			if x == 0 {
				continue
			}
			cur[i] += x
			if best < 0 || cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		seq = append(seq, int32(best))
	}
	return seq
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
