package tunnel

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns the two ends of a TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// pipeBetween runs Pipe between two fresh TCP connections and returns the
// outer ends (the client's and the backend's) and Pipe's result.
func pipeBetween(t *testing.T, to Timeouts) (client, backend *net.TCPConn, in, out *atomic.Int64, result chan error) {
	client, lbClient := tcpPair(t)
	lbUp, backend := tcpPair(t)
	in, out = new(atomic.Int64), new(atomic.Int64)
	result = make(chan error, 1)
	go func() {
		err := Pipe(lbClient, lbUp, to, in, out)
		lbClient.Close() // as Pipe's callers do
		result <- err
	}()
	return client, backend, in, out, result
}

func waitPipe(t *testing.T, result chan error, within time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	select {
	case err := <-result:
		return time.Since(start), err
	case <-time.After(within):
		t.Fatalf("Pipe still running after %s", within)
		return 0, nil
	}
}

// A client that stops reading a spliced download while it keeps sending
// (so the connection is never idle) is cut by the write bound, and both
// of lb's sockets close.
func TestPipeCutsAStalledSplicedDirection(t *testing.T) {
	client, backend, _, _, result := pipeBetween(t, Timeouts{Idle: time.Minute, Write: 300 * time.Millisecond})
	go func() { _, _ = io.Copy(io.Discard, backend) }() // ends when the pipe is cut
	backendCut := make(chan struct{})
	go func() {
		defer close(backendCut)
		buf := make([]byte, 64<<10)
		if err := backend.SetWriteDeadline(time.Now().Add(20 * time.Second)); err != nil {
			t.Error(err)
			return
		}
		for {
			if _, err := backend.Write(buf); err != nil {
				if isTimeout(err) {
					t.Errorf("the backend's writes were never cut: %v", err)
				}
				return
			}
		}
	}()
	go func() {
		for range 1000 {
			if err := client.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
				return // closed: the pipe was cut
			}
			if _, err := client.Write([]byte("ping")); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	took, err := waitPipe(t, result, 10*time.Second)
	if !errors.Is(err, ErrClientStalled) {
		t.Fatalf("Pipe ended with %v, want %v", err, ErrClientStalled)
	}
	<-backendCut
	t.Logf("cut %s after start", took.Round(time.Millisecond))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Once a spliced transfer is over and neither side sends, the idle bound
// ends the pipe.
func TestPipeIdleAfterSplice(t *testing.T) {
	client, backend, in, _, result := pipeBetween(t, Timeouts{Idle: 300 * time.Millisecond})
	payload := make([]byte, 1<<20)
	wrote := make(chan error, 1)
	go func() {
		_, err := client.Write(payload)
		wrote <- err
	}()
	if err := backend.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(backend, make([]byte, len(payload))); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	last := time.Now()
	_, err := waitPipe(t, result, 5*time.Second)
	idle := time.Since(last)
	if !errors.Is(err, ErrIdle) {
		t.Fatalf("Pipe ended with %v, want %v", err, ErrIdle)
	}
	if idle < 300*time.Millisecond || idle > 2*time.Second {
		t.Fatalf("ended %s after the last byte, want about 300ms", idle)
	}
	if in.Load() != int64(len(payload)) {
		t.Fatalf("counted %d bytes in, want %d", in.Load(), len(payload))
	}
}

// A transfer that keeps moving, however slowly and for however long, is
// never cut: a 1 MiB splice to this reader takes longer than the bounds.
func TestPipeBusyTransferOutlivesBounds(t *testing.T) {
	client, backend, _, out, result := pipeBetween(t, Timeouts{Idle: 200 * time.Millisecond, Write: 200 * time.Millisecond})
	const total = 3 << 20
	go func() {
		buf := make([]byte, 64<<10)
		for sent := 0; sent < total; sent += len(buf) {
			if _, err := backend.Write(buf); err != nil {
				return
			}
		}
		if err := backend.CloseWrite(); err != nil {
			t.Error(err)
		}
	}()
	if err := client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// About 1.6 MB/s, so that the transfer lasts ten bounds.
	start := time.Now()
	var got int
	buf := make([]byte, 16<<10)
	for {
		n, err := client.Read(buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err := waitPipe(t, result, 5*time.Second)
	if err != nil || got != total || out.Load() != total {
		t.Fatalf("a busy transfer ended after %s with %v: %d bytes read, %d counted, want %d",
			time.Since(start).Round(time.Millisecond), err, got, out.Load(), total)
	}
	t.Logf("%d bytes in %s with 200ms bounds", total, time.Since(start).Round(time.Millisecond))
}
