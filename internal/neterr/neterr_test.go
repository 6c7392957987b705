package neterr

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestBare(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	if got := Bare(refused); got != syscall.ECONNREFUSED {
		t.Errorf("Bare(%q) = %q, want %q", refused, got, syscall.ECONNREFUSED)
	}
	plain := errors.New("bad response")
	if got := Bare(plain); got != plain {
		t.Errorf("Bare(%q) = %q", plain, got)
	}
	if Bare(nil) != nil {
		t.Error("Bare(nil) is not nil")
	}
}
