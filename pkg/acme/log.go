package acme

import (
	"context"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapLogger makes the zap logger certmagic wants write to lb's hclog
// logger, so that its lines (the CA's problem documents among them) come
// out in lb's log format. For a name's logger it also notes certmagic's
// planned retries, which certmagic tells only its log.
func zapLogger(log hclog.Logger, n *Name) *zap.Logger {
	return zap.New(&zapCore{log: log, name: n})
}

// zapCore is a zapcore.Core over hclog.
type zapCore struct {
	log    hclog.Logger
	name   *Name
	fields []zapcore.Field
}

func (c *zapCore) Enabled(l zapcore.Level) bool {
	switch {
	case l >= zapcore.ErrorLevel:
		return c.log.IsError()
	case l == zapcore.WarnLevel:
		return c.log.IsWarn()
	case l == zapcore.InfoLevel:
		return c.log.IsInfo()
	}
	return c.log.IsDebug()
}

func (c *zapCore) With(fields []zapcore.Field) zapcore.Core {
	return &zapCore{log: c.log, name: c.name, fields: append(append([]zapcore.Field(nil), c.fields...), fields...)}
}

func (c *zapCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) || (c.name != nil && e.Message == "will retry") {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *zapCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	if c.name != nil && e.Message == "will retry" {
		if d, ok := enc.Fields["retrying_in"].(time.Duration); ok {
			c.name.retryIn(d)
		}
	}
	args := make([]any, 0, 2*len(enc.Fields)+2)
	if e.LoggerName != "" {
		args = append(args, "component", e.LoggerName)
	}
	for k, v := range enc.Fields {
		args = append(args, k, v)
	}
	switch {
	case quiet(enc.Fields):
		// An order lb cancelled (a name removed by a reload, a
		// shutdown), or a validation handshake for a name with no
		// challenge pending (anyone can send one): not errors of lb's.
		c.log.Debug(e.Message, args...)
	case e.Level >= zapcore.ErrorLevel:
		c.log.Error(e.Message, args...)
	case e.Level == zapcore.WarnLevel:
		c.log.Warn(e.Message, args...)
	case e.Level == zapcore.InfoLevel:
		c.log.Info(e.Message, args...)
	default:
		c.log.Debug(e.Message, args...)
	}
	return nil
}

func (c *zapCore) Sync() error { return nil }

// quiet reports whether certmagic's line is about a cancelled order or a
// challenge nothing is pending for.
func quiet(fields map[string]any) bool {
	var msg string
	switch e := fields["error"].(type) {
	case string:
		msg = e
	case error:
		msg = e.Error()
	default:
		return false
	}
	return strings.Contains(msg, context.Canceled.Error()) || strings.Contains(msg, "no information found")
}
