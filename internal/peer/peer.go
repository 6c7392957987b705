// Package peer tells whether the client at the far end of a connection
// has gone away, without reading from the connection: an HTTP/1.1 client
// that closes while its request is at a backend says so only in TCP (a
// FIN, or a reset), and what it may have sent before (a pipelined
// request, TLS's close_notify) is not lb's to read yet.
package peer

import (
	"net"
	"syscall"
)

// Gone reports whether the peer of c has closed its side of the
// connection (the socket got a FIN: CLOSE_WAIT) or reset it. c is looked
// through to the socket: *tls.Conn and wrappers with NetConn or RawConn.
// False when there is no socket to ask, or on systems where lb does not
// ask (see gone_other.go). It costs a system call and a few small
// allocations: it is for asking now and then (once a second of a slow
// request), not per request.
func Gone(c net.Conn) bool {
	for {
		switch x := c.(type) {
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
			continue
		case interface{ RawConn() net.Conn }:
			c = x.RawConn()
			continue
		}
		break
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true // closed
	}
	return closedState(raw)
}
