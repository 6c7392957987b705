package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/testutil"
)

// recorder is a backend that speaks HTTP/1.1 by hand: it keeps the exact
// bytes each connection brought, parses them strictly (RFC 9112: CRLF line
// ends, token field names, no obs-fold, one framing at most) and answers
// every well-formed request with a fixed 200. A request it cannot parse
// is recorded as an error and its connection closed.
type recorder struct {
	ln   net.Listener
	addr string

	mu    sync.Mutex
	reqs  []recorded
	conns []*recConn
	live  map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// recorded is one request as the recorder read it.
type recorded struct {
	conn    int    // connection number, in accept order
	raw     []byte // the bytes of the request, head and body as sent
	method  string // empty when err is set
	target  string
	version string
	fields  [][2]string // in order, names as sent
	body    []byte      // decoded
	framing string      // "none", "content-length" or "chunked"
	extra   int         // bytes already waiting behind the request
	err     error       // why the bytes were not a well-formed request
}

// recConn is the raw byte log of one connection.
type recConn = testutil.SyncBuffer

func startRecorder(t *testing.T) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{ln: ln, addr: ln.Addr().String(), live: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for c := range r.live {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *recorder) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.live[c] = struct{}{}
		rc := &recConn{}
		r.conns = append(r.conns, rc)
		n := len(r.conns) - 1
		r.mu.Unlock()
		r.wg.Add(1)
		go r.serve(c, rc, n)
	}
}

// serve reads requests off one connection until it closes or sends
// something that is not a well-formed request.
func (r *recorder) serve(c net.Conn, rc *recConn, n int) {
	defer r.wg.Done()
	defer func() {
		c.Close()
		r.mu.Lock()
		delete(r.live, c)
		r.mu.Unlock()
	}()
	br := bufio.NewReaderSize(io.TeeReader(c, rc), 64<<10)
	for {
		// Wait for a first byte: a connection lb closes between requests
		// is not an error.
		if _, err := br.Peek(1); err != nil {
			return
		}
		lr := &logReader{r: br}
		req := parseStrict(lr)
		req.conn, req.raw, req.extra = n, lr.log, br.Buffered()
		r.mu.Lock()
		r.reqs = append(r.reqs, req)
		r.mu.Unlock()
		if req.err != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

// count is the number of requests (well-formed or not) seen so far.
func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// since returns the requests seen after the first n.
func (r *recorder) since(n int) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs[n:]...)
}

// leftovers reports, per connection, bytes the recorder received but did
// not take as part of a request: bytes smuggled behind the last one.
// Connections that ended in a malformed request are left out: the
// recorder stopped reading them there, and the case that sent it fails
// on its own.
func (r *recorder) leftovers() map[int]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	used, broken := map[int]int{}, map[int]bool{}
	for _, q := range r.reqs {
		used[q.conn] += len(q.raw)
		broken[q.conn] = broken[q.conn] || q.err != nil
	}
	out := map[int]int{}
	for i, c := range r.conns {
		if got := len(c.String()); got != used[i] && !broken[i] {
			out[i] = got - used[i]
		}
	}
	return out
}

// logReader keeps what is read through it: the raw bytes of one request.
type logReader struct {
	r   *bufio.Reader
	log []byte
}

const maxRecLine = 64 << 10

// line reads one line that must end in CRLF, with no other CR or LF.
func (l *logReader) line() (string, error) {
	b, err := l.r.ReadSlice('\n')
	l.log = append(l.log, b...)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	if len(b) < 2 || b[len(b)-2] != '\r' {
		return "", errors.New("line not ended by CRLF")
	}
	b = b[:len(b)-2]
	if bytes.IndexByte(b, '\r') >= 0 {
		return "", errors.New("bare CR")
	}
	return string(b), nil
}

func (l *logReader) full(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(l.r, b)
	l.log = append(l.log, b...)
	return b, err
}

func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

// parseStrict reads one request as RFC 9112 has it, refusing anything a
// lenient parser might read another way.
func parseStrict(l *logReader) (q recorded) {
	fail := func(format string, a ...any) recorded {
		q.err = fmt.Errorf(format, a...)
		q.method = ""
		return q
	}
	line, err := l.line()
	if err != nil {
		return fail("request line: %v", err)
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 {
		return fail("request line %q: not three parts", line)
	}
	q.method, q.target, q.version = parts[0], parts[1], parts[2]
	if !isToken(q.method) {
		return fail("method %q", q.method)
	}
	if q.version != "HTTP/1.1" {
		return fail("version %q", q.version)
	}
	for i := 0; i < len(q.target); i++ {
		if c := q.target[i]; c <= ' ' || c >= 0x7f {
			return fail("target %q", q.target)
		}
	}
	if q.target != "*" && !strings.HasPrefix(q.target, "/") {
		return fail("target %q not in origin form", q.target)
	}
	size := 0
	for {
		line, err := l.line()
		if err != nil {
			return fail("field line: %v", err)
		}
		if size += len(line); size > maxRecLine {
			return fail("head too large")
		}
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return fail("obs-fold")
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return fail("field line %q", line)
		}
		value = strings.Trim(value, " \t")
		for i := 0; i < len(value); i++ {
			if c := value[i]; (c < ' ' && c != '\t') || c == 0x7f {
				return fail("field value %q", value)
			}
		}
		q.fields = append(q.fields, [2]string{name, value})
	}
	cls, tes, hosts := q.values("Content-Length"), q.values("Transfer-Encoding"), q.values("Host")
	if len(hosts) != 1 {
		return fail("%d Host fields", len(hosts))
	}
	switch {
	case len(cls) > 0 && len(tes) > 0:
		return fail("both Content-Length and Transfer-Encoding")
	case len(tes) > 1 || len(tes) == 1 && tes[0] != "chunked":
		return fail("Transfer-Encoding %q", tes)
	case len(cls) > 1:
		return fail("Content-Length %q", cls)
	case len(tes) == 1:
		q.framing = "chunked"
		if err := readChunkedStrict(l, &q); err != nil {
			return fail("chunked body: %v", err)
		}
	case len(cls) == 1:
		q.framing = "content-length"
		n, err := strconv.ParseUint(cls[0], 10, 31)
		if err != nil || cls[0][0] == '+' {
			return fail("Content-Length %q", cls[0])
		}
		if q.body, err = l.full(int(n)); err != nil {
			return fail("body: %v", err)
		}
	default:
		q.framing = "none"
	}
	return q
}

func readChunkedStrict(l *logReader, q *recorded) error {
	for {
		line, err := l.line()
		if err != nil {
			return err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseUint(size, 16, 31)
		if err != nil || size == "" || strings.ContainsAny(size, "+-xX ") {
			return fmt.Errorf("chunk size %q", line)
		}
		if n == 0 {
			for {
				t, err := l.line()
				if err != nil {
					return err
				}
				if t == "" {
					return nil
				}
				name, _, ok := strings.Cut(t, ":")
				if !ok || !isToken(name) {
					return fmt.Errorf("trailer %q", t)
				}
				q.fields = append(q.fields, [2]string{"trailer:" + name, ""})
			}
		}
		b, err := l.full(int(n))
		if err != nil {
			return err
		}
		q.body = append(q.body, b...)
		if end, err := l.line(); err != nil || end != "" {
			return fmt.Errorf("no CRLF after chunk data")
		}
	}
}

// values are the values of the named field, case-insensitively.
func (q *recorded) values(name string) []string {
	var out []string
	for _, f := range q.fields {
		if strings.EqualFold(f[0], name) {
			out = append(out, f[1])
		}
	}
	return out
}

func (q *recorded) value(name string) string {
	v := q.values(name)
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// summary is one request in short, for the results table.
func (q *recorded) summary() string {
	if q.err != nil {
		return "malformed: " + q.err.Error()
	}
	s := fmt.Sprintf("%s %s, Host %s", q.method, q.target, q.value("Host"))
	switch q.framing {
	case "content-length":
		s += fmt.Sprintf(", Content-Length %d", len(q.body))
	case "chunked":
		s += fmt.Sprintf(", chunked %d bytes", len(q.body))
	}
	return s
}

// waitQuiet waits until the recorder has seen no new request for a short
// while, so that late bytes are counted in the case that sent them.
func (r *recorder) waitQuiet(d time.Duration) {
	last, since := r.count(), time.Now()
	for time.Since(since) < d {
		time.Sleep(5 * time.Millisecond)
		if n := r.count(); n != last {
			last, since = n, time.Now()
		}
	}
}
