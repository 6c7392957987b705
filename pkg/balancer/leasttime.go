package balancer

import (
	"math"
	"math/rand/v2"
	"time"
)

// leastTime is the peak-EWMA of Finagle and Linkerd, picked as they do
// by the power of two choices: two distinct backends drawn at random by
// weight, and the one of lower cost takes the request. A backend's cost
// is its peak-EWMA response time times one more than its requests in
// flight, per unit of weight. A response slower than the average counts
// in full at once, so a backend that slows down loses its share within a
// request or two, and faster answers bring its average back down over
// ewmaDecay; an idle backend's average decays toward zero, so it is tried
// again. A backend with no answer yet counts as free while it has nothing
// in flight and as the most costly while it has, so that a new backend
// takes one request at a time until it has a time. Drawing two rather
// than scanning for the cheapest spreads requests over backends that are
// about as fast (a scan would send every request to whichever is a
// microsecond ahead) and keeps several lb instances from all choosing the
// same backend; the costliest backend is never chosen while another can
// take the request.
type leastTime struct{}

// penalty is the cost of a backend with requests in flight and no
// response time yet.
const penalty = math.MaxFloat64 / 4

func (*leastTime) next(p *Pool, tried *Tried) *Backend {
	seq := *p.rr.table.Load()
	n := len(seq)
	if n == 0 {
		return nil
	}
	now := time.Now()
	var first *Backend
	var firstCost float64
	for range maxDraws {
		b := p.Backends[seq[rand.IntN(n)]]
		if b == first || !p.candidate(b, tried) {
			continue
		}
		c := timeCost(b, now)
		if first == nil {
			first, firstCost = b, c
			continue
		}
		if c < firstCost {
			return b
		}
		return first
	}
	// No two candidates drawn (one backend left, or the others full,
	// tried or down): the cheapest of all.
	return cheapest(p, tried, now)
}

// timeCost is b's cost at now.
func timeCost(b *Backend, now time.Time) float64 {
	a := b.active.Load()
	cost := b.ewmaCost(now.UnixNano())
	if cost == 0 && a > 0 {
		cost = penalty
	} else {
		cost *= float64(a + 1)
	}
	w := float64(b.Weight) * weightScale
	if b.slowStart.Load() != 0 {
		w = float64(b.scaledWeight(now))
	}
	return cost / w
}

// cheapest returns the candidate of lowest cost, scanning from a random
// backend so that ties spread.
func cheapest(p *Pool, tried *Tried, now time.Time) *Backend {
	bs := p.Backends
	n := len(bs)
	i := int(rand.Uint32N(uint32(n)))
	var best *Backend
	bestCost := 0.0
	for range n {
		b := bs[i]
		if i++; i == n {
			i = 0
		}
		if !p.candidate(b, tried) {
			continue
		}
		if c := timeCost(b, now); best == nil || c < bestCost {
			best, bestCost = b, c
		}
	}
	return best
}
