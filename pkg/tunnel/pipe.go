// Package tunnel copies bytes both ways between two connections until
// both directions are done: a tcp listener's connection to its backend,
// and an HTTP connection that switched protocols (a WebSocket). Between
// plain TCP sockets a bulk transfer moves to splice, and one watchdog
// timer a connection enforces the idle and write bounds, following
// spliced copies through the sockets' TCP_INFO.
package tunnel

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// bufPool holds copy buffers.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// Pipe copies between client and upstream both ways until both
// directions are done, passing a half-close on: a client that shuts its
// write side down still gets the whole answer. in and out count the bytes
// that went from the client and to it (neither may be nil); they may be
// read while Pipe runs.
// t bounds the connection (see Timeouts); when a bound runs out, or
// either direction fails, both connections are closed and Pipe returns
// the cause (ErrIdle, ErrClientStalled, ErrBackendStalled, or the copy's
// error). upstream is closed when Pipe returns; client is closed only if
// the pipe was cut (the caller closes it). Pipe copies on two goroutines,
// its caller's and one of its own; any number of Pipes may run at once.
func Pipe(client, upstream net.Conn, t Timeouts, in, out *atomic.Int64) error {
	toBackend, toClient := &direction{count: in}, &direction{count: out}
	w := startWatchdog(t, client, upstream, toBackend, toClient)
	// finished counts directions that reached their end: the first to
	// end passes the half-close on; when the second ends, both
	// connections are about to be closed and a half-close would only
	// cost a system call.
	var finished atomic.Int32
	done := make(chan error, 1)
	go func() {
		err := copyStream(upstream, client, toBackend)
		if err != nil {
			abort(client, upstream) // unblock the other direction
		} else if finished.Add(1) == 1 {
			closeWrite(upstream)
		}
		done <- err
	}()
	errOut := copyStream(client, upstream, toClient)
	if errOut != nil {
		abort(client, upstream)
	} else if finished.Add(1) == 1 {
		closeWrite(client)
	}
	errIn := <-done
	cause := w.stop()
	upstream.Close()
	switch {
	case cause != nil:
		return cause
	case errOut != nil:
		return fmt.Errorf("backend to client: %w", errOut)
	case errIn != nil:
		return fmt.Errorf("client to backend: %w", errIn)
	}
	return nil
}

// copyStream copies src to dst until src ends (nil) or fails. It starts
// with reads and writes through a buffer, which suit small exchanges, and
// moves to splice once a read fills the buffer. It sets no deadlines: the
// watchdog, told what the copy is doing through dir, enforces the bounds.
func copyStream(dst, src net.Conn, dir *direction) error {
	dstTCP, srcTCP := tcpConn(dst), tcpConn(src)
	spliceOK := canSplice && dstTCP != nil && srcTCP != nil
	bufp := bufPool.Get().(*[]byte)
	buf := *bufp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			dir.writing.Store(true)
			w, werr := dst.Write(buf[:n])
			dir.writing.Store(false)
			dir.count.Add(int64(w))
			if werr != nil {
				bufPool.Put(bufp)
				return werr
			}
			if n == len(buf) && spliceOK {
				// A bulk transfer: between two plain TCP sockets let
				// the kernel move the rest (splice, which io.Copy uses
				// when it sees *net.TCPConn on both ends).
				bufPool.Put(bufp)
				dir.src, dir.dst = srcTCP, dstTCP
				dir.splicing.Store(true)
				n, err := dstTCP.ReadFrom(srcTCP)
				dir.count.Add(n)
				return err
			}
		}
		if err != nil {
			bufPool.Put(bufp)
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// tcpConn returns the plain TCP socket under c, or nil when c is TLS or
// holds buffered bytes.
func tcpConn(c net.Conn) *net.TCPConn {
	for {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case interface{ RawConn() net.Conn }:
			c = x.RawConn()
			if c == nil {
				return nil
			}
		default:
			return nil
		}
	}
}

// closeWrite half-closes c: TLS sends close_notify, TCP a FIN.
func closeWrite(c net.Conn) {
	// A failed half-close is a broken connection, which the other
	// direction's copy reports.
	switch x := c.(type) {
	case *tls.Conn:
		_ = x.CloseWrite()
	case interface{ CloseWrite() error }:
		_ = x.CloseWrite()
	default:
		if t := tcpConn(c); t != nil {
			_ = t.CloseWrite()
		}
	}
}
