package balancer

import "time"

// Reporter is told how each leased request went, so that a backend that
// keeps failing them can be taken out; pkg/health's Monitor is one. Its
// methods are called from whichever goroutine ends a lease, so they must
// be safe for concurrent use.
type Reporter interface {
	// ReportSuccess records a request b answered.
	ReportSuccess(b *Backend)
	// ReportFailure records a request that failed by b's fault, with
	// the reason (which also becomes b's last error).
	ReportFailure(b *Backend, reason string)
}

// Lease is one request's slot on a backend, from Pool.Lease to End: the
// bookkeeping every request or connection sent to a backend goes
// through, HTTP or TCP alike. A Lease is a value: its copies hold the
// same slot, and exactly one End must end it, once, from any goroutine.
// The zero Lease holds no slot, and its Backend is nil.
type Lease struct {
	// Backend is the backend the slot is on.
	Backend *Backend

	pool   *Pool
	report Reporter
}

// Lease picks a backend not in tried and takes a slot on it, as Acquire
// does (waiting up to wait when every usable backend is at MaxConns, and
// failing with ErrNoBackend or ErrQueueTimeout), and adds it to tried,
// which may be nil, so that a retry goes elsewhere. The outcome is
// reported to r when the lease ends; a nil r takes no reports.
func (p *Pool) Lease(tried *Tried, wait time.Duration, r Reporter) (Lease, error) {
	b, err := p.Acquire(tried, wait)
	if err != nil {
		return Lease{}, err
	}
	if tried != nil {
		tried.Add(b)
	}
	return Lease{Backend: b, pool: p, report: r}, nil
}

// End frees the slot (waking requests queued for one), counts the request
// on the backend, failed if err is not nil, and reports the outcome: nil
// err is a success; a failure is reported as the backend's when blame is
// set, and otherwise only recorded as its last error, so that failures the
// backend is not to blame for (a client's refused upload, a client too
// slow for the backend) cannot take it out. Without a Reporter nothing is
// reported or recorded beyond the count.
func (l Lease) End(err error, blame bool) {
	b := l.Backend
	l.pool.Release(b)
	b.CountRequest(err != nil)
	if l.report == nil {
		return
	}
	switch {
	case err == nil:
		l.report.ReportSuccess(b)
	case blame:
		l.report.ReportFailure(b, err.Error())
	default:
		b.SetLastError(err.Error())
	}
}

// Withdraw ends a lease whose request the client withdrew before the
// backend answered (it went away, and the exchange was cut): the slot is
// freed and the request counted, but neither as failed nor as a success,
// and nothing is reported or recorded, since the request says nothing of
// the backend's health. It is the End of such a lease.
func (l Lease) Withdraw() {
	l.pool.Release(l.Backend)
	l.Backend.CountRequest(false)
}

// LeaseOn takes a slot on b, the backend a request asks for by name (a
// sticky session's), as Lease does for a backend it picks, and adds b
// to tried. b must be up, untried, of weight above zero, and among the
// backends serving (a backup only while no other backend is usable); a
// drained backend still takes the requests that ask for it, even while
// backups serve because every other backend is drained too. When b is at
// MaxConns the request waits up to wait for one of its slots, as HAProxy
// queues a persistent request on its server. It fails with ErrNoBackend
// when b may not take it (the caller picks another), and with
// ErrQueueTimeout when no slot freed in time.
func (p *Pool) LeaseOn(b *Backend, tried *Tried, wait time.Duration, r Reporter) (Lease, error) {
	if !p.mayTake(b, tried) {
		return Lease{}, ErrNoBackend
	}
	if !b.tryAcquire(p.MaxConns) {
		if err := p.queueOn(b, tried, wait); err != nil {
			return Lease{}, err
		}
	}
	if tried != nil {
		tried.Add(b)
	}
	return Lease{Backend: b, pool: p, report: r}, nil
}

// mayTake reports whether b may take a request that asks for it: up,
// among the backends serving, or a drained one that is not a backup (its
// sessions stay while backups take the new clients of a pool whose every
// other backend is drained).
func (p *Pool) mayTake(b *Backend, tried *Tried) bool {
	return b.Up() && b.Weight > 0 && (p.inTier(b) || !b.Backup && b.Drained()) && !tried.Has(b)
}

// queueOn waits up to wait for a slot on b and takes it.
func (p *Pool) queueOn(b *Backend, tried *Tried, wait time.Duration) error {
	_, err := p.waitFor(wait, func() (*Backend, bool) {
		if b.tryAcquire(p.MaxConns) {
			return b, true
		}
		return nil, p.mayTake(b, tried)
	})
	return err
}
