package upstream

import (
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/offloadlb/lb/internal/neterr"
)

// ErrorKind says at which step an exchange with a backend failed, which
// decides the status code and whether another attempt is safe.
type ErrorKind int

// Error kinds.
const (
	// ErrConnect: the connection could not be opened; nothing was sent.
	ErrConnect ErrorKind = iota + 1
	// ErrStale: a pooled connection turned out closed before any byte of
	// a response arrived; the backend most likely never saw the request.
	ErrStale
	// ErrSend: writing the request failed.
	ErrSend
	// ErrTimeout: no response within response_timeout.
	ErrTimeout
	// ErrResponse: the response was not valid HTTP, or broke off.
	ErrResponse
	// ErrAborted: the client went away and the exchange was cut (see
	// abort.Signal); the backend is not to blame, and nobody is left to
	// retry for.
	ErrAborted
)

// Error is a failed exchange with a backend: every error RoundTrip
// returns is one, and so is every error but io.EOF a Body's Read returns.
// It is not changed once returned.
type Error struct {
	// Kind is the step that failed; never zero in an Error RoundTrip
	// returns.
	Kind ErrorKind
	// Err is the cause, from the network or the HTTP parser.
	Err error
}

// Error describes the failure, less the addresses of net errors, which
// log lines carry as fields already.
func (e *Error) Error() string {
	var what string
	switch e.Kind {
	case ErrConnect:
		what = "connect"
	case ErrStale:
		what = "reused connection closed"
	case ErrSend:
		what = "send request"
	case ErrTimeout:
		what = "response timeout"
	case ErrAborted:
		what = "cut"
	default:
		what = "bad response"
	}
	return what + ": " + neterr.Bare(e.Err).Error()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isClosed reports errors that mean the peer closed or reset the
// connection.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// aborted reports whether err is an exchange cut because the client went
// away.
func aborted(err error) bool {
	e, ok := err.(*Error)
	return ok && e.Kind == ErrAborted
}
