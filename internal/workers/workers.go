// Package workers runs jobs on goroutines it keeps for reuse.
//
// A fresh goroutine per job starts with a small stack and grows it,
// copying it each time it doubles, on every job; a kept goroutine already
// has the stack its jobs need. lb runs TLS handshakes (whose crypto grows a
// stack to a few tens of KiB) and HTTP/2 requests this way. The goroutine
// a job's result is handed to (a connection's server) then never grew its
// stack for the job, so idle connections stay small.
package workers

import (
	"sync"
	"time"
)

// DefaultIdle is how long a worker waits for another job before it ends,
// for a Pool made with an idle time of 0.
const DefaultIdle = 10 * time.Second

// Pool runs jobs of type J with one function, each on a goroutine of the
// pool: the worker that went idle last if there is one, else a new one.
// Using the most recently idle worker first lets a few hot workers do the
// work while the rest expire: a worker ends after being idle for between
// one and one and a half times the pool's idle time, never sooner.
//
// Handing a job to an idle worker allocates nothing. All methods are safe
// for concurrent use. A Pool is made by New; the zero Pool is not usable.
type Pool[J any] struct {
	run  func(J)
	idle time.Duration

	mu       sync.Mutex
	waiting  []*worker[J] // idle, oldest first
	cleaner  *time.Timer  // runs clean every idle/2 while any worker waits
	cleaning bool         // cleaner is set
	closed   bool
	// tick counts the cleaner's rounds: a worker idle since three ticks
	// ago has waited at least idle. It spares a clock read per job.
	tick uint64
}

type worker[J any] struct {
	jobs chan J // closed to end the worker
	tick uint64 // the pool's tick when it went idle
}

// New returns a pool whose workers call run for each job and end after
// idle without one (DefaultIdle if idle is 0). run is called on many
// goroutines at once.
func New[J any](idle time.Duration, run func(J)) *Pool[J] {
	if idle <= 0 {
		idle = DefaultIdle
	}
	return &Pool[J]{run: run, idle: idle}
}

// Go runs j on an idle worker, or on a new one, and returns without
// waiting for it. After Close it runs nothing and returns false: the
// caller disposes of j.
func (p *Pool[J]) Go(j J) bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	if n := len(p.waiting); n > 0 {
		w := p.waiting[n-1]
		p.waiting[n-1] = nil
		p.waiting = p.waiting[:n-1]
		p.mu.Unlock()
		w.jobs <- j // buffered: the worker is idle, so it is empty
		return true
	}
	p.mu.Unlock()
	go p.work(&worker[J]{jobs: make(chan J, 1)}, j)
	return true
}

// work runs j and then the jobs handed to w, until w is ended.
func (p *Pool[J]) work(w *worker[J], j J) {
	for {
		p.run(j)
		var zero J
		j = zero // nothing of the job stays reachable while w waits
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		w.tick = p.tick
		p.waiting = append(p.waiting, w)
		if !p.cleaning {
			p.cleaning = true
			if p.cleaner == nil {
				p.cleaner = time.AfterFunc(p.idle/2, p.clean)
			} else {
				p.cleaner.Reset(p.idle / 2)
			}
		}
		p.mu.Unlock()
		var ok bool
		if j, ok = <-w.jobs; !ok {
			return
		}
	}
}

// clean ends workers idle longer than p.idle, and sets itself to run
// again while any are left.
func (p *Pool[J]) clean() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.tick++
	n := 0
	for n < len(p.waiting) && p.waiting[n].tick+3 <= p.tick {
		close(p.waiting[n].jobs)
		p.waiting[n] = nil
		n++
	}
	p.waiting = append(p.waiting[:0], p.waiting[n:]...)
	if len(p.waiting) == 0 {
		p.cleaning = false
		return
	}
	p.cleaner.Reset(p.idle / 2)
}

// Idle is the number of workers waiting for a job.
func (p *Pool[J]) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}

// Close ends the idle workers, and the others as their jobs finish; Go
// runs nothing from then on. Jobs under way are not waited for. Calling
// it again does nothing.
func (p *Pool[J]) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.cleaner != nil {
		p.cleaner.Stop()
	}
	p.cleaning = false
	for i, w := range p.waiting {
		close(w.jobs)
		p.waiting[i] = nil
	}
	p.waiting = p.waiting[:0]
}
