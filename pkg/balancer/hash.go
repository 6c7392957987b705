package balancer

import (
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// hashRing is consistent hashing on a ring with virtual nodes (ketama, as
// NGINX's "hash ... consistent" and HAProxy's "hash-type consistent" do):
// each backend owns pointsPerWeight points per unit of weight, placed by
// hashing its address, and a key goes to the owner of the first point at
// or after the key's hash. Removing one of N backends moves only the keys
// of its points, about 1/N, to their next points; a backend that is
// down, drained, full or already tried is passed over the same way,
// without moving anyone else's keys, and its keys come back when it
// does. Points depend only on addresses and weights, so every lb
// instance with the same pool sends a key to the same backend.
//
// A ring rather than Maglev, whose table must be rebuilt (moving more
// than the dead backend's keys) to pass over a backend, or rendezvous
// hashing, whose pick reads every backend: a pick here is a binary search
// and usually one point. Bounded loads walk the ring too: a backend above
// its bound passes the key to the next one (Mirrokni, Thorup and
// Zadimoghaddam, "Consistent Hashing with Bounded Loads", which HAProxy
// calls hash-balance-factor).
type hashRing struct {
	// primary holds the points of the backends that are not backups,
	// backup those of the backups, each sorted by hash.
	primary, backup []ringPoint
}

type ringPoint struct {
	hash uint64
	idx  int32
}

// pointsPerWeight is how many points a backend has per unit of weight
// (NGINX places 160): the more, the closer a backend's share of the keys
// comes to its weight's share (within about 6% of it with 256).
const pointsPerWeight = 256

// maxRingPoints bounds a ring's size (16 bytes a point); past it, every
// backend's points are scaled down together, each keeping at least 8.
const maxRingPoints = 1 << 20

func newHashRing(backends []*Backend) *hashRing {
	r := &hashRing{}
	r.primary = buildRing(backends, false)
	r.backup = buildRing(backends, true)
	return r
}

func buildRing(backends []*Backend, backup bool) []ringPoint {
	total := 0
	for _, b := range backends {
		if b.Backup == backup {
			total += b.Weight * pointsPerWeight
		}
	}
	scale := 1.0
	if total > maxRingPoints {
		scale = float64(maxRingPoints) / float64(total)
	}
	pts := make([]ringPoint, 0, min(total, maxRingPoints+8*len(backends)))
	buf := make([]byte, 0, 64)
	for _, b := range backends {
		if b.Backup != backup || b.Weight <= 0 {
			continue
		}
		n := max(8, int(float64(b.Weight*pointsPerWeight)*scale))
		for i := range n {
			buf = strconv.AppendInt(append(append(buf[:0], b.Address...), '-'), int64(i), 10)
			pts = append(pts, ringPoint{hash: xxhash.Sum64(buf), idx: int32(b.Index)})
		}
	}
	slices.SortFunc(pts, func(a, b ringPoint) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return int(a.idx - b.idx)
	})
	return pts
}

// HashKey is the key algorithm hash places on its ring for a request
// whose key (client address, URI, header or cookie value) is k.
func HashKey(k []byte) uint64 { return xxhash.Sum64(k) }

// next returns the candidate that owns tried's key, passing over
// backends that are not candidates or are above the load bound. When
// every candidate is above the bound (a retry whose untried backends are
// all busy, say) the first of them on the ring takes the request: the
// bound spreads load, and never refuses a request a backend can take.
func (r *hashRing) next(p *Pool, tried *Tried) *Backend {
	pts := r.primary
	if p.hasBackup && p.backupTier.Load() {
		pts = r.backup
	}
	n := len(pts)
	if n == 0 {
		return nil
	}
	start, _ := slices.BinarySearchFunc(pts, tried.key, func(pt ringPoint, k uint64) int {
		switch {
		case pt.hash < k:
			return -1
		case pt.hash > k:
			return 1
		}
		return 0
	})
	bound := p.loadBound()
	var over *Backend // the first candidate passed over for the bound
	// Backends already passed over, for the pools small enough to track
	// them on the stack: a point of one of those is skipped at once, and
	// the walk ends when every backend has been passed over. In larger
	// pools the walk is cut after a few points per backend.
	var passed [4]uint64
	tracked := len(p.Backends) <= 256
	left := len(p.Backends)
	steps := n
	if !tracked {
		steps = min(n, 16*len(p.Backends))
	}
	for j := range steps {
		b := p.Backends[pts[(start+j)%n].idx]
		if tracked {
			bit := uint64(1) << (b.Index & 63)
			if passed[b.Index>>6]&bit != 0 {
				continue
			}
			passed[b.Index>>6] |= bit
			left--
		}
		if p.candidate(b, tried) {
			if bound == 0 || float64(b.active.Load()+1) <= math.Ceil(bound*float64(b.Weight)) {
				return b
			}
			if over == nil {
				over = b
			}
		}
		if tracked && left == 0 {
			break
		}
	}
	if over != nil {
		return over
	}
	if !tracked {
		return scan(p, tried)
	}
	return nil
}

// loadBound is how many requests in flight a backend may have per unit
// of weight, with the one being placed, under HashBalance: that factor
// times the mean over the backends now serving, or 0 for no bound. A
// backend's bound is this times its weight, rounded up.
func (p *Pool) loadBound() float64 {
	c := p.HashBalance
	if c <= 0 {
		return 0
	}
	var active int64
	weight := 0
	for _, b := range p.Backends {
		if b.Usable() && b.Weight > 0 && p.inTier(b) {
			active += b.active.Load()
			weight += b.Weight
		}
	}
	if weight == 0 {
		return 0
	}
	return c * float64(active+1) / float64(weight)
}
