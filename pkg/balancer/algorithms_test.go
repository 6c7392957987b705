package balancer

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"
)

// owners maps each of n keys to the backend a hash pool picks for it.
func owners(t *testing.T, p *Pool, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range n {
		var tried Tried
		tried.SetKey(HashKey(fmt.Appendf(nil, "user-%d", i)))
		b, err := p.Acquire(&tried, 0)
		if err != nil {
			t.Fatal(err)
		}
		p.Release(b)
		out[i] = b.Address
	}
	return out
}

func hashPool(t *testing.T, addrs ...string) *Pool {
	t.Helper()
	bs := make([]*Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = &Backend{Address: a, Weight: 1}
	}
	p, err := NewPool("cache", Hash, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHashSpreadsAndMovesLittle(t *testing.T) {
	const keys = 1000
	four := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
	p := hashPool(t, four...)
	before := owners(t, p, keys)
	share := map[string]int{}
	for _, o := range before {
		share[o]++
	}
	for _, a := range four {
		if share[a] < keys/4-keys/10 || share[a] > keys/4+keys/10 {
			t.Errorf("%s owns %d of %d keys; want about a quarter", a, share[a], keys)
		}
	}
	// The same pool built again (another lb, a reload) agrees.
	if again := owners(t, hashPool(t, four...), keys); fmt.Sprint(again) != fmt.Sprint(before) {
		t.Error("two pools with the same backends place keys differently")
	}
	moved := func(after []string) (n int) {
		for i := range after {
			if after[i] != before[i] {
				n++
			}
		}
		return n
	}

	// One backend down: only its keys move, the others stay put.
	p.Backends[2].SetUp(false)
	p.Refresh()
	down := owners(t, p, keys)
	for i := range down {
		if before[i] != four[2] && down[i] != before[i] {
			t.Fatalf("key %d moved from %s to %s, though its backend is up", i, before[i], down[i])
		}
		if down[i] == four[2] {
			t.Fatalf("key %d still goes to the down backend", i)
		}
	}
	t.Logf("shares %v; one down moved %d", share, moved(down))
	if m := moved(down); m > keys/4+keys/20 {
		t.Errorf("one of 4 backends down moved %d of %d keys; want at most 1/4 + 5%%", m, keys)
	}
	// Back up: every key returns.
	p.Backends[2].SetUp(true)
	p.Refresh()
	if m := moved(owners(t, p, keys)); m != 0 {
		t.Errorf("%d keys did not return to their backend when it came back", m)
	}

	// One backend removed from the config.
	removed := owners(t, hashPool(t, four[0], four[1], four[3]), keys)
	if m := moved(removed); m > keys/4+keys/20 {
		t.Errorf("removing one of 4 backends moved %d of %d keys; want at most 1/4 + 5%%", m, keys)
	}
	// One added: about a fifth move, all to the new one.
	added := owners(t, hashPool(t, append(four, "10.0.0.5:80")...), keys)
	m := moved(added)
	if m > keys/5+keys/20 {
		t.Errorf("adding a fifth backend moved %d of %d keys; want at most 1/5 + 5%%", m, keys)
	}
	for i := range added {
		if added[i] != before[i] && added[i] != "10.0.0.5:80" {
			t.Fatalf("key %d moved from %s to %s, not to the new backend", i, before[i], added[i])
		}
	}
}

func TestHashHonoursWeights(t *testing.T) {
	bs := []*Backend{{Address: "a:1", Weight: 3}, {Address: "b:1", Weight: 1}}
	p, err := NewPool("w", Hash, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	share := map[string]int{}
	for _, o := range owners(t, p, 4000) {
		share[o]++
	}
	if r := float64(share["a:1"]) / float64(share["b:1"]); r < 2.5 || r > 3.5 {
		t.Errorf("weights 3 and 1 got %v: ratio %.2f, want about 3", share, r)
	}
}

func TestHashWithoutKeyGoesRoundRobin(t *testing.T) {
	p := newTestPool(t, Hash, 0, 1, 1, 1)
	if got := pickSeq(t, p, 6); got != "abcabc" {
		t.Errorf("requests without a key went %q; want round robin", got)
	}
}

func TestHashBoundedLoad(t *testing.T) {
	p := hashPool(t, "a:1", "b:1", "c:1", "d:1")
	p.HashBalance = 1.25
	key := HashKey([]byte("the hot key"))
	var held []*Backend
	for range 100 {
		var tried Tried
		tried.SetKey(key)
		b, err := p.Acquire(&tried, 0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	// 100 requests in flight on 4 backends: none above ceil(1.25 * 100 / 4).
	limit := int64(math.Ceil(1.25 * 100 / 4))
	for _, b := range p.Backends {
		if b.Active() > limit {
			t.Errorf("%s has %d requests of one key in flight; the bound is %d", b.Address, b.Active(), limit)
		}
	}
	// The key's own backend is full to its bound: the rest spilled over.
	if first := held[0]; first.Active() < limit-1 {
		t.Errorf("the key's backend %s has only %d in flight; keys should stay home up to the bound", first.Address, first.Active())
	}
	for _, b := range held {
		p.Release(b)
	}
	// Without a bound, one hot key stays on one backend.
	p.HashBalance = 0
	counts := map[string]int{}
	for range 50 {
		var tried Tried
		tried.SetKey(key)
		b, err := p.Acquire(&tried, 0)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Address]++
	}
	if len(counts) != 1 {
		t.Errorf("without hash_balance one key went to %v", counts)
	}
}

func TestRandomTwoPrefersTheLessLoaded(t *testing.T) {
	p := newTestPool(t, RandomTwo, 0, 1, 1)
	// Backend a has 50 requests in flight.
	for range 50 {
		p.Backends[0].active.Inc()
	}
	counts := map[string]int{}
	for range 200 {
		b, err := p.Acquire(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Address]++
		p.Release(b)
	}
	// Two draws from two backends: a is chosen only when both draws are a
	// (or b could not be drawn), about a quarter of the time at most.
	if counts["a"] > 80 {
		t.Errorf("random_two sent %d of 200 to the loaded backend: %v", counts["a"], counts)
	}
	// With equal load it spreads.
	p.Backends[0].active.Sub(50)
	counts = map[string]int{}
	for range 400 {
		b, err := p.Acquire(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Address]++
		p.Release(b)
	}
	if counts["a"] < 120 || counts["b"] < 120 {
		t.Errorf("random_two with equal load: %v", counts)
	}
}

func TestLeastTimeAvoidsASlowedBackend(t *testing.T) {
	p := newTestPool(t, LeastTime, 0, 1, 1, 1)
	now := time.Now()
	// A second of answers in 2 ms from everyone.
	for i := range 100 {
		at := now.Add(time.Duration(i) * 10 * time.Millisecond)
		for _, b := range p.Backends {
			b.ObserveTime(2*time.Millisecond, at)
		}
	}
	now = now.Add(time.Second)
	// Backend b slows down: one answer in 50 ms counts at once (the peak).
	p.Backends[1].ObserveTime(50*time.Millisecond, now)
	if got := p.Backends[1].LatencyEWMA(now); got < 40*time.Millisecond {
		t.Fatalf("after a 50 ms answer the EWMA is %v", got)
	}
	counts := map[string]int{}
	for range 300 {
		b, err := p.Acquire(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		counts[b.Address]++
		p.Release(b)
	}
	if counts["b"] != 0 {
		t.Errorf("least_time sent %d of 300 requests to the backend that slowed down: %v", counts["b"], counts)
	}
	// Fast answers bring it back over the decay (10 s): after 30 s of them
	// it is cheap again.
	for i := range 300 {
		p.Backends[1].ObserveTime(2*time.Millisecond, now.Add(time.Duration(i)*100*time.Millisecond))
	}
	if got := p.Backends[1].LatencyEWMA(now.Add(30 * time.Second)); got > 5*time.Millisecond {
		t.Errorf("after 30 s of 2 ms answers the EWMA is %v", got)
	}
	// A backend with no answer yet takes one request at a time.
	q := newTestPool(t, LeastTime, 0, 1, 1)
	q.Backends[0].ObserveTime(time.Millisecond, time.Now())
	first, _ := q.Acquire(nil, 0)
	second, _ := q.Acquire(nil, 0)
	if first == second {
		t.Errorf("two requests in a row went to %s", first.Address)
	}
}

func TestLeastTimeCountsLoad(t *testing.T) {
	p := newTestPool(t, LeastTime, 0, 1, 1)
	now := time.Now()
	for _, b := range p.Backends {
		b.ObserveTime(10*time.Millisecond, now)
	}
	// Same times; a has 5 in flight, so b is cheaper.
	for range 5 {
		p.Backends[0].active.Inc()
	}
	b, _ := p.Acquire(nil, 0)
	if b.Address != "b" {
		t.Errorf("least_time picked %s, which has 5 requests in flight against none", b.Address)
	}
}

func TestBackupsServeOnlyWhileNoPrimaryIsUsable(t *testing.T) {
	for _, algo := range []string{RoundRobin, LeastConn, RandomTwo, LeastTime, Hash} {
		t.Run(algo, func(t *testing.T) {
			bs := []*Backend{{Address: "p1", Weight: 1}, {Address: "p2", Weight: 1}, {Address: "backup", Weight: 1, Backup: true}}
			p, err := NewPool("b", algo, bs, 0)
			if err != nil {
				t.Fatal(err)
			}
			pick := func(i int) string {
				var tried Tried
				tried.SetKey(uint64(i) * 0x9e3779b97f4a7c15)
				b, err := p.Acquire(&tried, 0)
				if err != nil {
					return err.Error()
				}
				p.Release(b)
				return b.Address
			}
			for i := range 50 {
				if got := pick(i); got == "backup" {
					t.Fatal("the backup took a request while primaries were up")
				}
			}
			bs[0].SetUp(false)
			bs[1].SetDrained(true)
			p.Refresh()
			if !p.BackupsServing() {
				t.Error("BackupsServing is false with no primary usable")
			}
			for i := range 20 {
				if got := pick(i); got != "backup" {
					t.Fatalf("with no primary usable a request went to %q", got)
				}
			}
			bs[0].SetUp(true)
			p.Refresh()
			for i := range 20 {
				if got := pick(i); got != "p1" {
					t.Fatalf("with p1 back a request went to %q", got)
				}
			}
		})
	}
}

func TestLeaseOn(t *testing.T) {
	p := newTestPool(t, RoundRobin, 1, 1, 1)
	a := p.Backends[0]
	// A drained backend keeps the requests that ask for it.
	a.SetDrained(true)
	p.Refresh()
	var tried Tried
	l, err := p.LeaseOn(a, &tried, 0, nil)
	if err != nil {
		t.Fatalf("LeaseOn a drained backend: %v", err)
	}
	if !tried.Has(a) {
		t.Error("LeaseOn did not add the backend to tried")
	}
	// Tried already: refused.
	if _, err := p.LeaseOn(a, &tried, 0, nil); !errors.Is(err, ErrNoBackend) {
		t.Errorf("LeaseOn a tried backend: %v", err)
	}
	// Full (max 1): waits for the slot, then gives up.
	start := time.Now()
	if _, err := p.LeaseOn(a, nil, 50*time.Millisecond, nil); !errors.Is(err, ErrQueueTimeout) {
		t.Errorf("LeaseOn a full backend: %v", err)
	}
	if time.Since(start) < 40*time.Millisecond {
		t.Error("LeaseOn a full backend did not wait")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		l.End(nil, false)
	}()
	l2, err := p.LeaseOn(a, nil, 2*time.Second, nil)
	if err != nil {
		t.Fatalf("LeaseOn when a slot frees: %v", err)
	}
	l2.End(nil, false)
	// Down: refused at once.
	a.SetUp(false)
	if _, err := p.LeaseOn(a, nil, time.Second, nil); !errors.Is(err, ErrNoBackend) {
		t.Errorf("LeaseOn a down backend: %v", err)
	}
}

// TestHashBoundNeverRefuses: a retry whose only untried backend is above
// the bound still goes there, as does a request when every backend is.
func TestHashBoundNeverRefuses(t *testing.T) {
	p := hashPool(t, "10.0.0.1:80", "10.0.0.2:80")
	p.HashBalance = 1.25
	a, b := p.Backends[0], p.Backends[1]
	b.active.Store(10)
	var tried Tried
	tried.SetKey(HashKey([]byte("k")))
	tried.Add(a) // a failed; the retry must go to b
	got, err := p.Acquire(&tried, 0)
	if err != nil || got != b {
		t.Fatalf("retry with b up and free: %v %v", got, err)
	}
	p.Release(got)
}

// TestHashWalkIsBounded: a keyed pick in a large pool whose backends are
// all down fails without visiting every point of the ring, and one up
// backend among many down ones is still found.
func TestHashWalkIsBounded(t *testing.T) {
	bs := make([]*Backend, 300)
	for i := range bs {
		bs[i] = &Backend{Address: fmt.Sprintf("10.0.%d.%d:80", i/256, i%256), Weight: 256}
	}
	p, err := NewPool("big", Hash, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		b.SetUp(false)
	}
	p.Refresh()
	var tried Tried
	tried.SetKey(HashKey([]byte("k")))
	start := time.Now()
	if _, err := p.Acquire(&tried, 0); err == nil {
		t.Fatal("picked a down backend")
	}
	if d := time.Since(start); d > 5*time.Millisecond {
		t.Logf("a failed pick over %d points took %v", len(p.ring.primary), d)
	}
	bs[123].SetUp(true)
	p.Refresh()
	if got, err := p.Acquire(&tried, 0); err != nil || got != bs[123] {
		t.Fatalf("one backend up among 300: %v %v", got, err)
	}
}

// TestDrainedPrimaryKeepsStickyClientsWhileBackupsServe: draining every
// primary hands new clients to the backups, while the sticky clients of
// the drained ones stay.
func TestDrainedPrimaryKeepsStickyClientsWhileBackupsServe(t *testing.T) {
	bs := []*Backend{{Address: "a", Weight: 1}, {Address: "b", Weight: 1}, {Address: "bk", Weight: 1, Backup: true}}
	p, err := NewPool("d", RoundRobin, bs, 0)
	if err != nil {
		t.Fatal(err)
	}
	bs[0].SetDrained(true)
	bs[1].SetDrained(true)
	p.Refresh()
	if !p.BackupsServing() {
		t.Fatal("backups not serving with every primary drained")
	}
	l, err := p.LeaseOn(bs[0], nil, 0, nil)
	if err != nil {
		t.Fatalf("a sticky request to a drained primary: %v", err)
	}
	l.End(nil, false)
	// A down primary does not take it.
	bs[1].SetUp(false)
	if _, err := p.LeaseOn(bs[1], nil, 0, nil); !errors.Is(err, ErrNoBackend) {
		t.Errorf("a sticky request to a down primary: %v", err)
	}
	// A backup's sticky clients move once a primary serves again.
	bs[0].SetDrained(false)
	p.Refresh()
	if _, err := p.LeaseOn(bs[2], nil, 0, nil); !errors.Is(err, ErrNoBackend) {
		t.Errorf("a sticky request to the backup with a primary back: %v", err)
	}
}
