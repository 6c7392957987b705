//go:build !linux

package tunnel

import "net"

// canSplice is false where lb cannot follow a kernel copy's progress: the
// copy then stays in user space, where the watchdog sees every chunk.
const canSplice = false

type socketProgress struct {
	received, acked uint64
	pending         bool
}

func tcpProgress(*net.TCPConn) (socketProgress, bool) { return socketProgress{}, false }
