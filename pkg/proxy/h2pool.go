package proxy

import (
	"sync"
	"time"
)

// workerIdle is how long a request goroutine waits for another request
// before it ends.
const workerIdle = 10 * time.Second

// workerPool runs HTTP/2 requests on goroutines it keeps for reuse. A
// fresh goroutine per request would start with a small stack and grow it
// (copying it twice) on every request; a kept one has the stack the
// request path needs. The most recently idle worker is used first, so that
// a few hot ones do the work and the rest expire.
type workerPool struct {
	idle time.Duration // workerIdle; shorter in tests

	mu       sync.Mutex
	waiting  []*worker // idle, oldest first
	cleaning bool
	// tick counts the cleaner's rounds, every idle/2: a worker idle since
	// three ticks ago has waited at least idle. It spares a clock read per
	// request.
	tick uint64
}

type worker struct {
	jobs chan h2Job
	tick uint64 // p.tick when it went idle
}

type h2Job struct {
	c  *h2Conn
	st *h2Stream
}

// run serves st on an idle worker, or on a new one.
func (p *workerPool) run(c *h2Conn, st *h2Stream) {
	p.mu.Lock()
	if n := len(p.waiting); n > 0 {
		w := p.waiting[n-1]
		p.waiting[n-1] = nil
		p.waiting = p.waiting[:n-1]
		p.mu.Unlock()
		w.jobs <- h2Job{c, st}
		return
	}
	p.mu.Unlock()
	go p.work(&worker{jobs: make(chan h2Job, 1)}, h2Job{c, st})
}

func (p *workerPool) work(w *worker, j h2Job) {
	for j.c != nil {
		j.c.run(j.st)
		j = h2Job{}
		p.mu.Lock()
		w.tick = p.tick
		p.waiting = append(p.waiting, w)
		if !p.cleaning {
			p.cleaning = true
			go p.clean()
		}
		p.mu.Unlock()
		j = <-w.jobs
	}
}

// clean ends workers idle longer than p.idle, while there are any.
func (p *workerPool) clean() {
	for {
		time.Sleep(p.idle / 2)
		p.mu.Lock()
		p.tick++
		n := 0
		for n < len(p.waiting) && p.waiting[n].tick+3 <= p.tick {
			p.waiting[n].jobs <- h2Job{}
			p.waiting[n] = nil
			n++
		}
		p.waiting = append(p.waiting[:0], p.waiting[n:]...)
		if len(p.waiting) == 0 {
			p.cleaning = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}
