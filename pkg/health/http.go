package health

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/neterr"
	"github.com/offloadlb/lb/pkg/config"
)

// httpChecker sends "GET path" on a new connection (Connection: close, as
// HAProxy's httpchk does, so a stale pooled connection cannot hide a dead
// listener) and passes when the status is in expect. Only the response
// head is read.
type httpChecker struct {
	path   string
	host   string // "" sends the backend address
	expect config.StatusSet
}

func (c *httpChecker) check(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect: %w", neterr.Bare(err))
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	host := c.host
	if host == "" {
		host = addr
	}
	req := "GET " + c.path + " HTTP/1.1\r\nHost: " + host +
		"\r\nUser-Agent: lb-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return fmt.Errorf("send GET %s: %w", c.path, neterr.Bare(err))
	}
	var h fasthttp.ResponseHeader
	if err := h.Read(bufio.NewReaderSize(conn, 4096)); err != nil {
		return fmt.Errorf("GET %s: bad or missing response: %w", c.path, neterr.Bare(err))
	}
	if code := h.StatusCode(); !c.expect.Contains(code) {
		return fmt.Errorf("GET %s: status %d (expect %s)", c.path, code, c.expect)
	}
	return nil
}

// tcpChecker passes when a TCP connection opens.
type tcpChecker struct{}

func (tcpChecker) check(ctx context.Context, addr string) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect: %w", neterr.Bare(err))
	}
	return conn.Close()
}
