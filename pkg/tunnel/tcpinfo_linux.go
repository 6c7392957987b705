//go:build linux

package tunnel

import (
	"net"

	"golang.org/x/sys/unix"
)

// canSplice is whether TCPConn.ReadFrom between two sockets moves bytes in
// the kernel (splice), out of lb's sight until it returns; the watchdog
// then follows such a copy through the sockets' TCP_INFO.
const canSplice = true

// socketProgress is what the kernel knows of one socket's progress.
type socketProgress struct {
	// received counts the bytes the peer sent; acked those it
	// acknowledged (took into its receive buffer).
	received, acked uint64
	// pending is whether bytes wait to be sent or acknowledged.
	pending bool
}

// tcpProgress reads a socket's TCP_INFO (one getsockopt).
func tcpProgress(c *net.TCPConn) (socketProgress, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return socketProgress{}, false
	}
	var info *unix.TCPInfo
	cerr := raw.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	})
	if cerr != nil || err != nil {
		return socketProgress{}, false
	}
	return socketProgress{
		received: info.Bytes_received,
		acked:    info.Bytes_acked,
		pending:  info.Notsent_bytes > 0 || info.Unacked > 0,
	}, true
}
