//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly || solaris

package upstream

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// probe asks a backend connection's socket, without blocking and
// without taking anything off it, whether the backend has closed the
// connection or sent bytes: one recv with MSG_PEEK and MSG_DONTWAIT,
// through the socket's RawConn. NGINX and HAProxy learn the same from
// their event loops while the connection idles. It runs for every reuse
// of a pooled connection, so it allocates nothing: the RawConn and the
// function it calls are made once, with the connection.
type probe struct {
	raw   syscall.RawConn       // nil when the connection is not a socket
	peek  func(fd uintptr)      // p.recv, kept: a method value made per call would allocate
	ready func(fd uintptr) bool // p.readable, kept likewise
	buf   [1]byte
	// quiet is what the last peek found: nothing to read, and no close.
	quiet bool
}

// init readies p for the socket under nc, if nc is one.
func (p *probe) init(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	p.raw, p.peek, p.ready = raw, p.recv, p.readable
}

// recv is the peek itself, run by RawConn.Control: not Read, which would
// take the socket's read lock and check its read deadline for a call
// that never waits (EAGAIN is the answer sought), at about 40 ns more a
// reuse. It calls syscall's Recvfrom, not unix's:
// the same system call, but unix.Recvfrom's address buffer escapes to
// the heap (112 bytes a call) where syscall's stays on the stack.
func (p *probe) recv(fd uintptr) {
	_, _, err := syscall.Recvfrom(int(fd), p.buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	p.quiet = err == unix.EAGAIN
}

// idle reports whether the socket has nothing to read and is still open;
// a connection that is not a socket counts as idle. A closed socket is
// not idle.
func (p *probe) idle() bool {
	if p.raw == nil {
		return true
	}
	p.quiet = false
	if err := p.raw.Control(p.peek); err != nil {
		return false
	}
	return p.quiet
}

// wait waits until the socket has bytes to read or the backend has closed
// it, without reading anything, and so without a buffer to read into:
// an exchange waits so for the answer while its request body streams,
// which may take as long as the upload does. It ends early, with its
// error, when the connection's read deadline passes or the connection
// is closed. Where the connection is not a socket it returns at once,
// and the read that follows waits instead.
func (p *probe) wait() error {
	if p.raw == nil {
		return nil
	}
	return p.raw.Read(p.ready)
}

// readable is wait's question, asked by RawConn.Read until it is true
// (between asks, the runtime's poller waits for the socket to turn
// readable): is there anything to read, or a close or error to find.
func (p *probe) readable(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), p.buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err != unix.EAGAIN
}
