package peer

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// closedState reads the socket's TCP state (TCP_INFO).
func closedState(raw syscall.RawConn) bool {
	var gone bool
	err := raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return
		}
		switch info.State {
		case unix.BPF_TCP_CLOSE_WAIT, unix.BPF_TCP_CLOSE, unix.BPF_TCP_LAST_ACK:
			gone = true
		}
	})
	return gone || err != nil
}
