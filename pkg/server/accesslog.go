package server

import (
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/accesslog"
	"github.com/offloadlb/lb/pkg/config"
)

// accessLog is the per-request log (and tcp listeners' per-connection
// log): lines are formatted by accesslog (requests) and hclog
// (connections, in lb's own text or JSON format) and written by an
// accesslog.Writer on its own goroutine, so that a slow disk or a
// blocked stdout never holds up a request.
type accessLog struct {
	path, format string
	requests     *accesslog.Log // nil when access logging is off
	conns        hclog.Logger
	w            *accesslog.Writer
}

func openAccessLog(g config.Global) (*accessLog, error) {
	a := &accessLog{path: g.AccessLog, format: g.AccessLogFormat}
	var out io.Writer
	var closer io.Closer
	switch g.AccessLog {
	case "":
		return a, nil
	case "stdout":
		out = os.Stdout
	case "stderr":
		out = os.Stderr
	default:
		f, err := os.OpenFile(g.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("access log: %w", err)
		}
		out, closer = f, f
	}
	format, ok := accesslog.ParseFormat(g.AccessLogFormat)
	if !ok {
		format = accesslog.Text // (the config's validation refuses others)
	}
	a.w = accesslog.NewWriter(out, closer)
	a.requests = accesslog.New(format, a.w)
	// The combined format has no fields for a tcp connection: their
	// lines are in lb's text format then.
	a.conns = hclog.New(&hclog.LoggerOptions{
		Name:       "access",
		Level:      hclog.Info,
		Output:     a.w,
		JSONFormat: format == accesslog.JSON,
	})
	return a, nil
}

// same reports whether g asks for this very log.
func (a *accessLog) same(g config.Global) bool {
	return a.path == g.AccessLog && a.format == g.AccessLogFormat
}

// Dropped is the number of lines dropped because the writer fell behind.
func (a *accessLog) Dropped() uint64 {
	if a == nil || a.w == nil {
		return 0
	}
	return a.w.Dropped()
}

// Close writes what is queued and closes the file.
func (a *accessLog) Close() {
	if a.w != nil {
		a.w.Close()
	}
}
