// Package neterr holds what lb's sides that talk to backends (the HTTP
// client, the tcp proxy, the health checks) share in reporting network
// errors.
package neterr

import (
	"errors"
	"net"
	"os"
)

// Bare returns the error under the wrappers of net and os: without
// net.OpError's "dial tcp 1.2.3.4:80:" or "read tcp 1.2.3.4:5->6.7.8.9:80:"
// and os.SyscallError's system call name, which log lines carry as
// fields already, leaving "connection refused" or "i/o timeout". An error
// without them, and nil, come back as they are. It only reads err, so
// any number of calls may run at once.
func Bare(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) && se.Err != nil {
		err = se.Err
	}
	return err
}
