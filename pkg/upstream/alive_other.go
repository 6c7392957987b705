//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly || solaris)

package upstream

import "net"

// probe would ask a backend connection's socket whether the backend has
// closed it or sent bytes; where there is no non-blocking peek to ask
// with, a pooled connection is taken as idle and a close is found when
// the request is sent (as ErrStale, resent if it may be).
type probe struct{}

func (p *probe) init(net.Conn) {}

func (p *probe) idle() bool { return true }

// wait returns at once: the read that follows waits instead.
func (p *probe) wait() error { return nil }
