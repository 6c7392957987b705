package l4

import (
	"bufio"
	"net"
	"time"
)

// AcceptProxy reads the PROXY protocol header that a trusted balancer in
// front sends at the start of c (version 1 or 2, told apart by their
// first bytes) and returns c with the addresses the header gives, so that
// logs, X-Forwarded-For and PROXY headers sent onward name the real
// client. A LOCAL header (the balancer's own health check) keeps c's
// addresses. A connection without a valid header within timeout is an
// error: with accept_proxy_protocol on, every connection must have one.
// Any number of calls may run at once, each on its own connection; the
// connection returned is then used as c would be.
func AcceptProxy(c net.Conn, timeout time.Duration) (net.Conn, error) {
	if timeout > 0 {
		_ = c.SetReadDeadline(time.Now().Add(timeout)) // fails only on a closed connection, which the read reports
	}
	br := bufio.NewReaderSize(c, 4096)
	h, err := ReadProxyHeader(br)
	if err != nil {
		return nil, err
	}
	_ = c.SetReadDeadline(time.Time{}) // as above: the next read reports a closed connection
	pc := &proxiedConn{Conn: c, br: br}
	if !h.Local && h.Source.IsValid() {
		pc.remote = net.TCPAddrFromAddrPort(h.Source)
		pc.local = net.TCPAddrFromAddrPort(h.Dest)
	}
	return pc, nil
}

// proxiedConn is a connection whose addresses came in a PROXY header,
// and whose first bytes after it may be buffered.
type proxiedConn struct {
	net.Conn
	br            *bufio.Reader // nil once drained
	remote, local net.Addr
}

func (c *proxiedConn) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.Conn.Read(p)
}

func (c *proxiedConn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

func (c *proxiedConn) LocalAddr() net.Addr {
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

// RawConn is the connection underneath, once no bytes wait in the buffer
// (for splice); nil before.
func (c *proxiedConn) RawConn() net.Conn {
	if c.br != nil && c.br.Buffered() > 0 {
		return nil
	}
	return c.Conn
}
