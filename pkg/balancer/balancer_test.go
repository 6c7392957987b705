package balancer

import (
	"sync"
	"testing"
	"time"
)

func newTestPool(t testing.TB, algo string, maxConns int, weights ...int) *Pool {
	t.Helper()
	bs := make([]*Backend, len(weights))
	for i, w := range weights {
		bs[i] = &Backend{Address: string(rune('a' + i)), Weight: w}
	}
	p, err := NewPool("test", algo, bs, maxConns)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pickSeq(t *testing.T, p *Pool, n int) string {
	t.Helper()
	var s []byte
	for range n {
		b, err := p.Acquire(nil, 0)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		s = append(s, b.Address...)
		p.Release(b)
	}
	return string(s)
}

func TestSmoothWeightedRoundRobin(t *testing.T) {
	tests := []struct {
		weights []int
		want    string
	}{
		{[]int{5, 1, 1}, "aabacaa" + "aabacaa"},
		{[]int{1, 1, 1}, "abcabc"},
		{[]int{2, 1}, "abaaba"},
		{[]int{10, 5, 5}, "abcaabcaabca"[:8]}, // gcd 5: same as 2,1,1
		{[]int{3, 0, 1}, "aacaaaca"},          // weight 0 gets nothing
	}
	for _, tt := range tests {
		p := newTestPool(t, RoundRobin, 0, tt.weights...)
		if got := pickSeq(t, p, len(tt.want)); got != tt.want {
			t.Errorf("weights %v: got %q, want %q", tt.weights, got, tt.want)
		}
	}
}

func TestSmoothSequenceIsSpreadOut(t *testing.T) {
	// The heavy backend must not take its whole share in a row: within a
	// cycle of 5,1,1 the longest run of "a" is 2.
	seq := smoothSequence([]int{5, 1, 1})
	counts := map[int32]int{}
	for _, i := range seq {
		counts[i]++
	}
	if counts[0] != 5 || counts[1] != 1 || counts[2] != 1 || len(seq) != 7 {
		t.Fatalf("sequence %v does not follow weights 5,1,1", seq)
	}
	run, longest := 0, 0
	for _, i := range seq {
		if i == 0 {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	if longest > 2 {
		t.Fatalf("sequence %v has %d picks of the heavy backend in a row", seq, longest)
	}
}

func TestRoundRobinSkipsDownAndDrained(t *testing.T) {
	p := newTestPool(t, RoundRobin, 0, 1, 1, 1)
	p.Backends[1].SetUp(false)
	p.Refresh()
	if got := pickSeq(t, p, 6); got != "acacac" {
		t.Fatalf("with b down got %q", got)
	}
	p.Backends[0].SetDrained(true)
	p.Refresh()
	if got := pickSeq(t, p, 3); got != "ccc" {
		t.Fatalf("with b down and a drained got %q", got)
	}
	p.Backends[2].SetUp(false)
	p.Refresh()
	if _, err := p.Acquire(nil, time.Second); err != ErrNoBackend {
		t.Fatalf("all unusable: got %v, want ErrNoBackend", err)
	}
	// A state change without Refresh must still be honoured by the pick.
	p.Backends[0].SetDrained(false)
	p.Refresh()
	p.Backends[0].SetUp(false)
	if _, err := p.Acquire(nil, 0); err != ErrNoBackend {
		t.Fatalf("stale table: got %v, want ErrNoBackend", err)
	}
}

func TestTriedBackendsAreAvoided(t *testing.T) {
	for _, algo := range []string{RoundRobin, LeastConn} {
		p := newTestPool(t, algo, 0, 5, 1, 1)
		var tried Tried
		seen := map[string]bool{}
		for range 3 {
			b, err := p.Acquire(&tried, 0)
			if err != nil {
				t.Fatalf("%s: %v", algo, err)
			}
			if seen[b.Address] {
				t.Fatalf("%s: %s picked twice", algo, b.Address)
			}
			seen[b.Address] = true
			tried.Add(b)
			p.Release(b)
		}
		if _, err := p.Acquire(&tried, 0); err != ErrNoBackend {
			t.Fatalf("%s: all tried: got %v", algo, err)
		}
	}
}

func TestLeastConnPicksFewestRelativeToWeight(t *testing.T) {
	p := newTestPool(t, LeastConn, 0, 1, 2, 1)
	// Hold requests open and watch where each new one goes.
	var held []*Backend
	for range 40 {
		b, err := p.Acquire(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	a, b, c := p.Backends[0].Active(), p.Backends[1].Active(), p.Backends[2].Active()
	if a != 10 || b != 20 || c != 10 {
		t.Fatalf("active after 40 held picks = %d,%d,%d; want 10,20,10", a, b, c)
	}
	for _, x := range held {
		p.Release(x)
	}
}

func TestLeastConnBreaksTiesFairly(t *testing.T) {
	p := newTestPool(t, LeastConn, 0, 1, 1, 1, 1)
	counts := map[string]int{}
	for range 4000 {
		b, _ := p.Acquire(nil, 0)
		counts[b.Address]++
		p.Release(b)
	}
	for addr, n := range counts {
		if n < 800 || n > 1200 {
			t.Fatalf("ties are not shared evenly: %v (%s got %d)", counts, addr, n)
		}
	}
}

func TestLeastConnUnderConcurrentLoadSpreadsByWeight(t *testing.T) {
	p := newTestPool(t, LeastConn, 0, 1, 3)
	var mu sync.Mutex
	peak := map[string]int64{}
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				b, err := p.Acquire(nil, 0)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				peak[b.Address]++
				mu.Unlock()
				time.Sleep(50 * time.Microsecond)
				p.Release(b)
			}
		}()
	}
	wg.Wait()
	a, b := float64(peak["a"]), float64(peak["b"])
	if r := b / a; r < 2 || r > 4.5 {
		t.Fatalf("requests a=%v b=%v: ratio %.2f, want about 3 (weights 1:3)", a, b, r)
	}
	if p.Backends[0].Active() != 0 || p.Backends[1].Active() != 0 {
		t.Fatal("active counts did not return to zero")
	}
}

func TestMaxConnsQueuesThenTimesOut(t *testing.T) {
	for _, algo := range []string{RoundRobin, LeastConn} {
		p := newTestPool(t, algo, 2, 1, 1)
		var held []*Backend
		for range 4 {
			b, err := p.Acquire(nil, 0)
			if err != nil {
				t.Fatalf("%s: %v", algo, err)
			}
			held = append(held, b)
		}
		for _, b := range p.Backends {
			if b.Active() != 2 {
				t.Fatalf("%s: %s active %d, want 2", algo, b.Address, b.Active())
			}
		}
		start := time.Now()
		if _, err := p.Acquire(nil, 50*time.Millisecond); err != ErrQueueTimeout {
			t.Fatalf("%s: full pool: got %v, want ErrQueueTimeout", algo, err)
		}
		if time.Since(start) < 40*time.Millisecond {
			t.Fatalf("%s: did not wait in the queue", algo)
		}
		// A release wakes a queued request.
		done := make(chan *Backend)
		go func() {
			b, err := p.Acquire(nil, 5*time.Second)
			if err != nil {
				t.Error(err)
			}
			done <- b
		}()
		for p.q.waiting.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		p.Release(held[0])
		if b := <-done; b != held[0] {
			t.Fatalf("%s: queued request got %v, want the freed %s", algo, b, held[0].Address)
		}
	}
}

func TestConcurrentPicksNeverExceedMaxConns(t *testing.T) {
	p := newTestPool(t, RoundRobin, 3, 1, 1, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				b, err := p.Acquire(nil, time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if n := b.Active(); n > 3 {
					t.Errorf("%s has %d in flight, limit 3", b.Address, n)
				}
				p.Release(b)
			}
		}()
	}
	wg.Wait()
}

// TestPickAllocatesNothing keeps what BenchmarkPick measures free of
// allocations: a pick by either algorithm, counted and released.
func TestPickAllocatesNothing(t *testing.T) {
	for _, algo := range []string{RoundRobin, LeastConn, RandomTwo, LeastTime, Hash} {
		p := newTestPool(t, algo, 512, 5, 1, 1, 3, 2, 1, 1, 4)
		p.HashBalance = 1.25
		var tried Tried
		i := uint64(0)
		got := testing.AllocsPerRun(1000, func() {
			tried = Tried{}
			i++
			tried.SetKey(HashKey([]byte{byte(i), byte(i >> 8)}))
			be, err := p.Acquire(&tried, 0)
			if err != nil {
				t.Fatal(err)
			}
			p.Release(be)
		})
		if got != 0 {
			t.Errorf("%s: %v allocations per pick", algo, got)
		}
	}
}

func BenchmarkPick(b *testing.B) {
	for _, algo := range []string{RoundRobin, LeastConn, RandomTwo, LeastTime, Hash} {
		b.Run(algo, func(b *testing.B) {
			p := newTestPool(b, algo, 512, 5, 1, 1, 3, 2, 1, 1, 4)
			p.HashBalance = 1.25
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var tried Tried
				k := uint64(0)
				for pb.Next() {
					// A new key each request, as many clients make.
					k++
					tried = Tried{}
					tried.SetKey(k * 0x9e3779b97f4a7c15)
					be, err := p.Acquire(&tried, 0)
					if err != nil {
						b.Error(err)
						return
					}
					p.Release(be)
				}
			})
		})
	}
}

func TestSlowStartRampsTheWeight(t *testing.T) {
	p := newTestPool(t, RoundRobin, 0, 10, 10)
	b := p.Backends[1]
	b.StartSlowStart(time.Second)
	start := time.Unix(0, b.slowStart.Load())
	for _, tc := range []struct {
		at   time.Duration
		want int
	}{{0, 1}, {100 * time.Millisecond, 1}, {150 * time.Millisecond, 2}, {500 * time.Millisecond, 5}, {999 * time.Millisecond, 10}, {2 * time.Second, 10}} {
		if got := b.EffectiveWeight(start.Add(tc.at)); got != tc.want {
			t.Errorf("weight %s into a 1s slow start: %d, want %d", tc.at, got, tc.want)
		}
	}
	if b.SlowStarting() {
		t.Error("slow start did not end")
	}

	// Round robin follows the ramp once the pool is refreshed.
	b.StartSlowStart(time.Hour)
	p.Refresh()
	counts := map[string]int{}
	for range 110 {
		x, _ := p.Acquire(nil, 0)
		counts[x.Address]++
		p.Release(x)
	}
	if counts["b"] > 15 {
		t.Errorf("a backend just starting its ramp got %d of 110 requests", counts["b"])
	}

	// Least connections too.
	lc := newTestPool(t, LeastConn, 0, 4, 4)
	lc.Backends[1].StartSlowStart(time.Hour)
	var held []*Backend
	for range 40 {
		x, _ := lc.Acquire(nil, 0)
		held = append(held, x)
	}
	if a := lc.Backends[1].Active(); a > 12 {
		t.Errorf("least_conn gave a slow-starting backend %d of 40", a)
	}
	for _, x := range held {
		lc.Release(x)
	}
}

// rampedTo puts b's slow start of length d at fraction f of the way.
func rampedTo(b *Backend, d time.Duration, f float64) {
	b.StartSlowStart(d)
	b.slowStart.Store(time.Now().Add(-time.Duration(f * float64(d))).UnixNano())
}

// TestSlowStartRampsWeightOne checks that the ramp works for weight 1, the
// default: a quarter of the way through, the ramping backend of two with
// weight 1 takes about a fifth of the requests (4/16 against 16/16), not
// half; at the end, half.
func TestSlowStartRampsWeightOne(t *testing.T) {
	const ramp = time.Hour
	t.Run(RoundRobin, func(t *testing.T) {
		p := newTestPool(t, RoundRobin, 0, 1, 1)
		rampedTo(p.Backends[1], ramp, 0.25)
		p.Refresh()
		counts := map[string]int{}
		for range 1000 {
			x, _ := p.Acquire(nil, 0)
			counts[x.Address]++
			p.Release(x)
		}
		if b := counts["b"]; b < 150 || b > 250 {
			t.Errorf("a quarter into its ramp, a weight-1 backend got %d of 1000 requests, want about 200", b)
		}
		rampedTo(p.Backends[1], ramp, 1)
		p.Refresh()
		if got := pickSeq(t, p, 10); got != "ababababab" {
			t.Errorf("after the ramp: %q, want an even share", got)
		}
	})
	t.Run(LeastConn, func(t *testing.T) {
		p := newTestPool(t, LeastConn, 0, 1, 1)
		rampedTo(p.Backends[1], ramp, 0.25)
		held := make([]*Backend, 0, 100)
		for range 100 {
			x, _ := p.Acquire(nil, 0)
			held = append(held, x)
		}
		if b := p.Backends[1].Active(); b < 15 || b > 25 {
			t.Errorf("a quarter into its ramp, a weight-1 backend holds %d of 100 requests, want about 20", b)
		}
		for _, x := range held {
			p.Release(x)
		}
		rampedTo(p.Backends[1], ramp, 1)
		held = held[:0]
		for range 100 {
			x, _ := p.Acquire(nil, 0)
			held = append(held, x)
		}
		if b := p.Backends[1].Active(); b != 50 {
			t.Errorf("after the ramp a weight-1 backend holds %d of 100 requests, want 50", b)
		}
		for _, x := range held {
			p.Release(x)
		}
	})
}

func TestBoundCycle(t *testing.T) {
	// Steady weights are multiples of the scale: the cycle is as short as
	// the configured weights make it.
	if seq := smoothSequence([]int{5 * weightScale, 1 * weightScale, 1 * weightScale}); len(seq) != 7 {
		t.Errorf("scaled 5,1,1: cycle of %d, want 7", len(seq))
	}
	w := make([]int, 300)
	for i := range w {
		w[i] = 256*weightScale - i
	}
	w[7] = 1 // just starting a ramp
	w[8] = 0 // down
	seq := smoothSequence(boundCycle(w, maxCycle))
	if len(seq) > maxCycle+len(w) {
		t.Fatalf("cycle of %d entries, bound %d", len(seq), maxCycle+len(w))
	}
	counts := make([]int, len(w))
	for _, i := range seq {
		counts[i]++
	}
	if counts[7] == 0 || counts[8] != 0 || counts[0] < 200 {
		t.Errorf("bounded cycle lost the weights: ramping %d, down %d, full %d", counts[7], counts[8], counts[0])
	}
}
