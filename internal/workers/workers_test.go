package workers

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPoolReusesAndExpires: jobs handed out one at a time run on one
// worker (or two, when a job came before the first worker was back), and
// idle workers end after the pool's idle time, the cleaner with them.
func TestPoolReusesAndExpires(t *testing.T) {
	var ran atomic.Int64
	done := make(chan struct{})
	p := New(100*time.Millisecond, func(int) {
		ran.Add(1)
		done <- struct{}{}
	})
	for i := range 20 {
		if !p.Go(i) {
			t.Fatal("Go refused a job on an open pool")
		}
		<-done
	}
	time.Sleep(10 * time.Millisecond) // the last worker goes back in the pool
	if n := p.Idle(); n < 1 || n > 2 {
		t.Errorf("%d idle workers after 20 jobs one at a time, want 1 or 2", n)
	}
	if ran.Load() != 20 {
		t.Errorf("%d jobs ran, want 20", ran.Load())
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		p.mu.Lock()
		n, cleaning := len(p.waiting), p.cleaning
		p.mu.Unlock()
		if n == 0 && !cleaning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d workers still idle, cleaner running %v", n, cleaning)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPoolRunsConcurrently: jobs handed out while others run get workers
// of their own.
func TestPoolRunsConcurrently(t *testing.T) {
	const n = 8
	var started sync.WaitGroup
	started.Add(n)
	release := make(chan struct{})
	p := New(time.Minute, func(int) {
		started.Done()
		<-release
	})
	for i := range n {
		p.Go(i)
	}
	started.Wait() // all n at once: each on a worker of its own
	close(release)
	for deadline := time.Now().Add(3 * time.Second); p.Idle() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle workers, want %d", p.Idle(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.Close()
}

// TestPoolClose: Close ends idle workers at once and busy ones when their
// jobs finish; Go refuses jobs after it.
func TestPoolClose(t *testing.T) {
	var running atomic.Int64
	release := make(chan struct{})
	p := New(time.Minute, func(wait bool) {
		running.Add(1)
		defer running.Add(-1)
		if wait {
			<-release
		}
	})
	base := runtime.NumGoroutine()
	p.Go(false)
	for p.Idle() != 1 {
		time.Sleep(time.Millisecond)
	}
	p.Go(true) // takes the idle worker
	for running.Load() != 1 {
		time.Sleep(time.Millisecond)
	}
	p.Go(false) // a second worker, which goes idle
	for p.Idle() != 1 {
		time.Sleep(time.Millisecond)
	}
	p.Close()
	p.Close()
	if p.Idle() != 0 {
		t.Errorf("%d idle workers after Close", p.Idle())
	}
	if p.Go(false) {
		t.Error("Go took a job after Close")
	}
	close(release)
	// Both workers end, and no cleaner is left waiting.
	for deadline := time.Now().Add(3 * time.Second); runtime.NumGoroutine() > base; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before the pool ran", runtime.NumGoroutine(), base)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p.Idle() != 0 {
		t.Errorf("a worker went idle after Close")
	}
}

// TestGoAllocatesNothing: handing a job to an idle worker allocates
// nothing.
func TestGoAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocations")
	}
	done := make(chan struct{})
	p := New(time.Minute, func(j [4]uintptr) { done <- struct{}{} })
	defer p.Close()
	// Each round finds the worker of the round before idle.
	round := func() {
		p.Go([4]uintptr{1, 2, 3, 4})
		<-done
		for p.Idle() == 0 {
			runtime.Gosched()
		}
	}
	for range 10 {
		round()
	}
	if n := testing.AllocsPerRun(1000, round); n != 0 {
		t.Errorf("%v allocations per job", n)
	}
}

// BenchmarkPoolGo hands jobs to the pool from many goroutines at once.
func BenchmarkPoolGo(b *testing.B) {
	var wg sync.WaitGroup
	p := New(time.Minute, func(*sync.WaitGroup) { wg.Done() })
	defer p.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			wg.Add(1)
			p.Go(&wg)
		}
	})
	wg.Wait()
}
