package policy

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestLimiterBucket(t *testing.T) {
	l := NewLimiter(10, 5) // 10 a second, bursts of 5
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("::ffff:192.0.2.2")
	now := time.Unix(1000, 0)
	for i := range 5 {
		if ok, _ := l.Allow(a, now); !ok {
			t.Fatalf("request %d of a burst of 5 refused", i+1)
		}
	}
	ok, wait := l.Allow(a, now)
	if ok || wait < 90*time.Millisecond || wait > 110*time.Millisecond {
		t.Fatalf("the 6th: %v, wait %v (want about 100 ms)", ok, wait)
	}
	if RetryAfter(wait) != 1 {
		t.Errorf("Retry-After %d", RetryAfter(wait))
	}
	// Another address has its own bucket; its IPv4-mapped form is the same
	// address.
	if ok, _ := l.Allow(b, now); !ok {
		t.Error("another address was refused")
	}
	if ok, _ := l.Allow(netip.MustParseAddr("192.0.2.2"), now); !ok {
		t.Error("the second request of b was refused")
	}
	// 100 ms later one more token.
	now = now.Add(100 * time.Millisecond)
	if ok, _ := l.Allow(a, now); !ok {
		t.Error("a token did not come back after 100 ms")
	}
	if ok, _ := l.Allow(a, now); ok {
		t.Error("two tokens after 100 ms")
	}
	// A long pause fills the bucket to the burst, not beyond.
	now = now.Add(time.Hour)
	n := 0
	for {
		if ok, _ := l.Allow(a, now); !ok {
			break
		}
		n++
	}
	if n != 5 {
		t.Errorf("after an hour %d requests went through, want the burst of 5", n)
	}
	var none *Limiter
	if ok, _ := none.Allow(a, now); !ok {
		t.Error("a nil limiter refused")
	}
}

// TestLimiterMemoryIsBounded: a million addresses fit in the table's
// fixed size, and an address seen recently keeps its bucket among them.
func TestLimiterMemoryIsBounded(t *testing.T) {
	l := NewLimiter(1, 1)
	now := time.Unix(1000, 0)
	hot := netip.MustParseAddr("198.51.100.7")
	l.Allow(hot, now) // its one token spent
	for i := range 1_000_000 {
		if i%1000 == 0 {
			// The hot client comes back now and then: recently used,
			// it is not the way evicted.
			if ok, _ := l.Allow(hot, now.Add(time.Duration(i))); ok {
				t.Fatalf("after %d other addresses the hot client's empty bucket was forgotten", i)
			}
		}
		l.Allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now.Add(time.Duration(i)))
	}
	if len(l.sets) != tableSets {
		t.Errorf("the table grew to %d sets", len(l.sets))
	}
}

func TestLimiterConcurrent(t *testing.T) {
	l := NewLimiter(1, 100)
	now := time.Unix(1000, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for range 100 {
				if ok, _ := l.Allow(netip.MustParseAddr("192.0.2.1"), now); ok {
					n++
				}
				l.Allow(netip.MustParseAddr(fmt.Sprintf("192.0.3.%d", g)), now)
			}
			mu.Lock()
			allowed += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	if allowed != 100 {
		t.Errorf("800 requests at once from one address: %d allowed, want the burst of 100", allowed)
	}
}

func TestLimiterAllocatesNothing(t *testing.T) {
	l := NewLimiter(1e6, 1e6)
	a := netip.MustParseAddr("2001:db8::1")
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() { l.Allow(a, now) }); n != 0 {
		t.Errorf("%v allocations per request", n)
	}
}

func BenchmarkLimiter(b *testing.B) {
	l := NewLimiter(1e9, 1e9)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := uint32(0)
		for pb.Next() {
			i++
			l.Allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), now)
		}
	})
}
