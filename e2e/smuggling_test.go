package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// smuggleCase is one request (or several, pipelined) sent to lb as raw
// bytes. Either lb refuses it (a 4xx, or 505, or closes the connection
// on input it cannot parse at all) and the backend sees nothing, or the
// backend sees exactly `backend` well-formed requests with one framing
// each and nothing behind them.
type smuggleCase struct {
	name string
	req  string
	// status is the status of lb's first answer; 0 accepts any 4xx or a
	// connection closed without an answer.
	status int
	// backend is how many requests must reach the backend.
	backend int
	// check, when set, looks at what the backend got.
	check func(t *testing.T, got []recorded)
	// tls also sends the case over the TLS listener.
	tls bool
}

const host = "Host: www.example.com\r\n"

// smuggled is a complete second request hidden in a body; if it ever
// reaches the backend, the case fails on the count.
const smuggled = "GET /smuggled HTTP/1.1\r\n" + host + "\r\n"

func smuggleCases() []smuggleCase {
	post := "POST / HTTP/1.1\r\n" + host
	get := "GET / HTTP/1.1\r\n" + host
	body := func(want, framing string) func(*testing.T, []recorded) {
		return func(t *testing.T, got []recorded) {
			if string(got[0].body) != want || got[0].framing != framing {
				t.Errorf("backend got body %q framed %s, want %q framed %s", got[0].body, got[0].framing, want, framing)
			}
		}
	}
	chunkedHello := "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
	long := strings.Repeat("a", 5000)
	cases := []smuggleCase{
		// Sanity: what must go through does, re-framed with one length.
		{name: "plain GET", req: get + "\r\n", status: 200, backend: 1, tls: true},
		{name: "POST with Content-Length", req: post + "Content-Length: 5\r\n\r\nhello", status: 200, backend: 1, check: body("hello", "content-length")},
		{name: "POST chunked", req: post + "Transfer-Encoding: chunked\r\n\r\n" + chunkedHello, status: 200, backend: 1, check: body("hello world", "content-length"), tls: true},
		{name: "GET with a body", req: get + "Content-Length: 3\r\n\r\nabc", status: 200, backend: 1, check: body("abc", "content-length")},

		// Content-Length and Transfer-Encoding together: RFC 9112 6.3
		// (3) lets a server reject it as smuggling, and a proxy that
		// forwarded it must drop Content-Length. NGINX answers 400,
		// and so does lb, with nothing reaching the backend.
		{name: "CL.TE with a smuggled request", req: post + fmt.Sprintf("Content-Length: %d\r\n", 5+len(smuggled)) + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, status: 400, tls: true},
		{name: "TE.CL with a smuggled request", req: post + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + fmt.Sprintf("%x\r\n", len(smuggled)) + smuggled + "\r\n0\r\n\r\n", status: 400, tls: true},
		{name: "CL and TE: identity", req: post + "Content-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello", status: 400},
		{name: "CL and TE: xchunked", req: post + "Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello", status: 400},

		// Content-Length must be 1*DIGIT (RFC 9110 8.6) and single: a
		// recipient MAY merge equal duplicates, but RFC 9112 6.3 (5)
		// makes any invalid length unrecoverable: 400, close. NGINX
		// refuses duplicates ("client sent duplicate header line").
		{name: "duplicate CL, equal", req: post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", status: 400, tls: true},
		{name: "duplicate CL, conflicting", req: post + "Content-Length: 5\r\nContent-Length: " + fmt.Sprint(5+len(smuggled)) + "\r\n\r\nhello" + smuggled, status: 400},
		{name: "CL with a plus sign", req: post + "Content-Length: +5\r\n\r\nhello", status: 400},
		{name: "CL negative", req: post + "Content-Length: -1\r\n\r\n" + smuggled, status: 400},
		{name: "CL with a space inside", req: post + "Content-Length: 1 0\r\n\r\nhello", status: 400},
		{name: "CL in hex", req: post + "Content-Length: 0x5\r\n\r\nhello", status: 400},
		{name: "CL list 5, 5", req: post + "Content-Length: 5, 5\r\n\r\nhello", status: 400},
		{name: "CL empty", req: post + "Content-Length:\r\n\r\nhello", status: 400},
		{name: "CL over 64 bits", req: post + "Content-Length: 99999999999999999999999\r\n\r\nhello", status: 0},
		{name: "CL with surrounding spaces (OWS)", req: post + "Content-Length:   5  \r\n\r\nhello", status: 200, backend: 1, check: body("hello", "content-length")},
		{name: "CL with leading zeros", req: post + "Content-Length: 005\r\n\r\nhello", status: 200, backend: 1, check: body("hello", "content-length")},
		{name: "CL shorter than the body, rest garbage", req: post + "Content-Length: 2\r\n\r\nhello", status: 200, backend: 1, check: body("he", "content-length")},

		// Obsolete line folding: RFC 9112 5.2 lets a server reject it
		// with 400 or unfold it. NGINX rejects it; a folded
		// Transfer-Encoding is read differently by different parsers,
		// so lb rejects every fold.
		{name: "obs-fold in a field", req: get + "X-Folded: a\r\n b\r\n\r\n", status: 400, tls: true},
		{name: "obs-fold of Transfer-Encoding", req: post + "Transfer-Encoding:\r\n chunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "obs-fold with a tab", req: get + "X-Folded: a\r\n\tb\r\n\r\n", status: 400},
		{name: "first field line starts with a space", req: "GET / HTTP/1.1\r\n " + host + "\r\n", status: 400},

		// Chunked bodies (RFC 9112 7.1): chunk-size is 1*HEXDIG, each
		// line ends in CRLF, the body ends with a last chunk. Anything
		// else is unrecoverable framing: 400. lb re-frames the body
		// with Content-Length, so extensions and trailers never reach
		// the backend as framing.
		{name: "chunk size not hex", req: post + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "chunk size negative", req: post + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "chunk size over 64 bits", req: post + "Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "chunk size 0x prefix", req: post + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "chunk data without CRLF", req: post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", status: 400},
		{name: "chunk size line ended by bare LF", req: post + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", status: 400},
		{name: "chunk extension", req: post + "Transfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0;x=\"q\"\r\n\r\n", status: 200, backend: 1, check: body("hello", "content-length")},
		{name: "chunk extension with bad characters", req: post + "Transfer-Encoding: chunked\r\n\r\n5;na\x01me=(v)\r\nhello\r\n0\r\n\r\n", status: 200, backend: 1, check: body("hello", "content-length")},
		{name: "chunk extension with bare LF", req: post + "Transfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "chunk extension with bare CR", req: post + "Transfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "missing last chunk", req: post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", status: 0},
		{name: "trailer field", req: post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n", status: 200, backend: 1, check: func(t *testing.T, got []recorded) {
			if string(got[0].body) != "hello" {
				t.Errorf("backend got body %q", got[0].body)
			}
		}},
		{name: "Content-Length in the trailer", req: post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n", status: 400},

		// Transfer-Encoding in disguise. Coding names are
		// case-insensitive and OWS around a value is not part of it
		// (RFC 9110 5.5, RFC 9112 6.1), so " chunked" and "Chunked" are
		// chunked. Any other coding, or chunked not last, is not
		// understood: NGINX 501, HAProxy 400. A space before the colon
		// MUST get a 400 (RFC 9112 5.1). Transfer-Encoding in HTTP/1.0
		// is faulty framing (RFC 9112 6.1).
		{name: "TE: ' chunked'", req: post + "Transfer-Encoding:  chunked\r\n\r\n" + chunkedHello, status: 200, backend: 1, check: body("hello world", "content-length")},
		{name: "TE: tab chunked", req: post + "Transfer-Encoding:\tchunked\r\n\r\n" + chunkedHello, status: 200, backend: 1, check: body("hello world", "content-length")},
		{name: "TE: Chunked", req: post + "Transfer-Encoding: Chunked\r\n\r\n" + chunkedHello, status: 200, backend: 1, check: body("hello world", "content-length")},
		{name: "TE: chunked, identity", req: post + "Transfer-Encoding: chunked, identity\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE: identity, chunked", req: post + "Transfer-Encoding: identity, chunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE: identity alone, smuggled body", req: post + "Transfer-Encoding: identity\r\n\r\n" + smuggled, status: 400, tls: true},
		{name: "TE: xchunked", req: post + "Transfer-Encoding: xchunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE: gzip, chunked", req: post + "Transfer-Encoding: gzip, chunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE with a space before the colon", req: post + "Transfer-Encoding : chunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE with a tab before the colon", req: post + "Transfer-Encoding\t: chunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE twice", req: post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE twice, second identity", req: post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" + chunkedHello, status: 400},
		{name: "TE on HTTP/1.0", req: "POST / HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n" + chunkedHello, status: 400},

		// Control characters and bad names: CR, LF and NUL in a field
		// value MUST be rejected or replaced (RFC 9110 5.5), a bare CR
		// MUST be treated as invalid (RFC 9112 2.2), a field name is a
		// token (RFC 9110 5.1), so no space, CTL or non-ASCII byte.
		// HAProxy refuses them with 400; lb does the same rather than
		// drop the field as NGINX does. A recipient MAY take a bare LF
		// for a line end (RFC 9112 2.2), as NGINX and HAProxy do; lb's
		// parser does so only when a CRLFCRLF comes later, which lets
		// bytes behind a bare-LF blank line pass for a second request,
		// so lb refuses a bare LF anywhere in the field lines (a bare
		// LF in a value may be refused, RFC 9110 5.5). The request line
		// is not seen raw and keeps fasthttp's leniency; the backend
		// gets it re-written with CRLF.
		{name: "NUL in a value", req: get + "X-A: a\x00b\r\n\r\n", status: 400},
		{name: "bare CR in a value", req: get + "X-A: a\rb\r\n\r\n", status: 400, tls: true},
		{name: "bare CR ending a field line", req: get + "X-A: a\rX-B: b\r\n\r\n", status: 400},
		{name: "bare LF in a value, rest not a field", req: get + "X-A: a\nb\r\n\r\n", status: 400},
		{name: "bare LF ending a field line", req: get + "X-A: a\nX-B: b\r\n\r\n", status: 400},
		{name: "every line ended by bare LF", req: "GET / HTTP/1.1\nHost: www.example.com\n\n", status: 0},
		{name: "bare LF blank line, then a request", req: get + "X-A: a\n\n" + smuggled, status: 400, tls: true},
		{name: "request line ended by bare LF", req: "GET / HTTP/1.1\n" + host + "\r\n", status: 200, backend: 1},
		{name: "CRLF in a field name", req: get + "X-A\r\n: b\r\n\r\n", status: 400},
		{name: "NUL in a field name", req: get + "X-\x00A: b\r\n\r\n", status: 400},
		{name: "space in a field name", req: get + "X A: b\r\n\r\n", status: 400, tls: true},
		{name: "space in Content-Length's name", req: post + "Content Length: 5\r\n\r\nhello", status: 400},
		{name: "non-ASCII in a field name", req: get + "X-\xc3\xa4: b\r\n\r\n", status: 400},
		{name: "non-ASCII in a value (obs-text)", req: get + "X-A: caf\xc3\xa9\r\n\r\n", status: 200, backend: 1},
		{name: "empty field name", req: get + ": b\r\n\r\n", status: 400},

		// Sizes: a head over max_header_bytes (4 KiB here) is refused
		// (431, as HAProxy; NGINX 414 for the request line).
		{name: "request line over max_header_bytes", req: "GET /" + long + " HTTP/1.1\r\n" + host + "\r\n", status: 431},
		{name: "head over max_header_bytes", req: get + strings.Repeat("X-Many: 0123456789012345678901234567890123456789\r\n", 100) + "\r\n", status: 431, tls: true},
		{name: "one field over max_header_bytes", req: get + "X-Long: " + long + "\r\n\r\n", status: 431},

		// Request targets (RFC 9112 3.2): absolute-form is answered as
		// for the target's authority, the Host field ignored, and a
		// backend gets origin-form with Host set to that authority.
		// CONNECT and TRACE are not proxied (405). OPTIONS * goes on
		// as asterisk-form; "*" with any other method is invalid.
		{name: "absolute-form", req: "GET http://other.example/p?q=1 HTTP/1.1\r\n" + host + "\r\n", status: 200, backend: 1, tls: true, check: func(t *testing.T, got []recorded) {
			if got[0].target != "/p?q=1" || got[0].value("Host") != "other.example" {
				t.Errorf("backend got target %q Host %q, want /p?q=1 and other.example", got[0].target, got[0].value("Host"))
			}
		}},
		{name: "CONNECT", req: "CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n", status: 405},
		{name: "TRACE", req: "TRACE / HTTP/1.1\r\n" + host + "\r\n", status: 405},
		{name: "OPTIONS *", req: "OPTIONS * HTTP/1.1\r\n" + host + "\r\n", status: 200, backend: 1, check: func(t *testing.T, got []recorded) {
			if got[0].method != "OPTIONS" || got[0].target != "*" {
				t.Errorf("backend got %s %s, want OPTIONS *", got[0].method, got[0].target)
			}
		}},
		{name: "GET *", req: "GET * HTTP/1.1\r\n" + host + "\r\n", status: 400},
		{name: "target without a slash", req: "GET foo HTTP/1.1\r\n" + host + "\r\n", status: 400},

		// Host (RFC 9112 3.2): a 1.1 request without one, with two, or
		// with a value that is not uri-host [":" port] MUST get a 400.
		// HTTP/1.0 may omit it.
		{name: "Host missing on HTTP/1.1", req: "GET / HTTP/1.1\r\n\r\n", status: 400},
		{name: "Host missing on HTTP/1.0", req: "GET / HTTP/1.0\r\n\r\n", status: 200, backend: 1},
		{name: "Host twice, same", req: get + host + "\r\n", status: 400},
		{name: "Host twice, different", req: get + "Host: other.example\r\n\r\n", status: 400, tls: true},
		{name: "Host with a space", req: "GET / HTTP/1.1\r\nHost: www.exa mple.com\r\n\r\n", status: 400},
		{name: "Host with a slash", req: "GET / HTTP/1.1\r\nHost: www.example.com/evil\r\n\r\n", status: 400, tls: true},
		{name: "Host with userinfo", req: "GET / HTTP/1.1\r\nHost: evil@www.example.com\r\n\r\n", status: 400},
		{name: "Host with a bad port", req: "GET / HTTP/1.1\r\nHost: www.example.com:80x\r\n\r\n", status: 400},
		{name: "Host with a port", req: "GET / HTTP/1.1\r\nHost: www.example.com:8080\r\n\r\n", status: 200, backend: 1},
		{name: "Host an IPv6 literal", req: "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", status: 200, backend: 1},

		// Request line (RFC 9112 3): one SP between the parts, a token
		// method (case-sensitive, so "get" is an unknown method a proxy
		// passes on, as HAProxy does), a version HTTP/1.x. Another major
		// version gets 505 (RFC 9110 15.6.6, as NGINX); a higher minor
		// is taken as 1.1's family (RFC 9110 2.5).
		{name: "lowercase method", req: "get / HTTP/1.1\r\n" + host + "\r\n", status: 200, backend: 1, check: func(t *testing.T, got []recorded) {
			if got[0].method != "get" {
				t.Errorf("backend got method %q", got[0].method)
			}
		}},
		{name: "two spaces after the method", req: "GET  / HTTP/1.1\r\n" + host + "\r\n", status: 400},
		{name: "space after the version", req: "GET / HTTP/1.1 \r\n" + host + "\r\n", status: 400},
		{name: "space in the target", req: "GET /a b HTTP/1.1\r\n" + host + "\r\n", status: 400},
		{name: "HTTP/2.0 on an HTTP/1 connection", req: "GET / HTTP/2.0\r\n" + host + "\r\n", status: 505, tls: true},
		{name: "HTTP/0.9 version", req: "GET / HTTP/0.9\r\n" + host + "\r\n", status: 505},
		{name: "HTTP/1.2", req: "GET / HTTP/1.2\r\n" + host + "\r\n", status: 200, backend: 1},
		{name: "garbage version", req: "GET / HTXP/1.1\r\n" + host + "\r\n", status: 400},
		{name: "lowercase version", req: "GET / http/1.1\r\n" + host + "\r\n", status: 400},
		{name: "HTTP/0.9-style GET /", req: "GET /\r\n\r\n", status: 0},

		// Pipelining: two requests in one write reach the backend as two,
		// in order, each framed by itself.
		{name: "pipelined pair", req: "GET /first HTTP/1.1\r\n" + host + "\r\n" + "POST /second HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", status: 200, backend: 2, tls: true, check: func(t *testing.T, got []recorded) {
			if got[0].target != "/first" || got[1].target != "/second" || string(got[1].body) != "hello" {
				t.Errorf("backend got %q then %q (body %q)", got[0].target, got[1].target, got[1].body)
			}
		}},

		// Expect: 100-continue is lb's to answer (RFC 9110 10.1.1): the
		// backend gets the whole request without it.
		{name: "Expect: 100-continue with a body", req: post + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", status: 200, backend: 1, check: func(t *testing.T, got []recorded) {
			if string(got[0].body) != "hello" || got[0].value("Expect") != "" {
				t.Errorf("backend got body %q Expect %q", got[0].body, got[0].value("Expect"))
			}
		}},
	}
	return cases
}

// smuggleResult is one row of the results table.
type smuggleResult struct {
	name, sent, answer, backend string
}

// TestSmuggling sends malformed and ambiguous requests to lb as raw bytes,
// over plain TCP and (for some) TLS, and checks that each is refused with
// nothing reaching the backend, or reaches it as exactly the request(s)
// meant, framed once.
func TestSmuggling(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	rec := startRecorder(t)
	cfg := `
[global]
log_level = "info"
access_log = ""
admin = "127.0.0.1:0"
shutdown_grace = "1s"
watch = false

[[listener]]
name = "plain"
bind = "127.0.0.1:0"
pool = "web"
read_timeout = "3s"
max_header_bytes = "4KiB"

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "web"
read_timeout = "3s"
max_header_bytes = "4KiB"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"
  alpn = ["http/1.1"]

[[pool]]
name = "web"
retries = 0
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "` + rec.addr + `"
`
	lb := startLB(t, dir, cfg)
	tlsConf := &tls.Config{RootCAs: certs.pool(), ServerName: "www.example.com", NextProtos: []string{"http/1.1"}}

	var results []smuggleResult
	for _, tc := range smuggleCases() {
		for _, overTLS := range []bool{false, true} {
			if overTLS && !tc.tls {
				continue
			}
			name := tc.name
			if overTLS {
				name += " (TLS)"
			}
			t.Run(name, func(t *testing.T) {
				before := rec.count()
				var c net.Conn
				var err error
				if overTLS {
					c, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", lb.addrs["tls"], tlsConf)
				} else {
					c, err = net.DialTimeout("tcp", lb.addrs["plain"], 2*time.Second)
				}
				if err != nil {
					t.Fatal(err)
				}
				statuses, raw := exchangeRaw(t, c, tc.req)
				// Anything lb forwarded was answered before lb answered
				// the client; wait a moment for bytes sent behind it.
				rec.waitQuiet(30 * time.Millisecond)
				got := rec.since(before)
				answer := "closed, no answer"
				if len(statuses) > 0 {
					answer = strings.Trim(strings.ReplaceAll(fmt.Sprint(statuses), " ", ", "), "[]")
				}
				results = append(results, smuggleResult{name: name, sent: shortRequest(tc.req), answer: answer, backend: backendSummary(got)})

				first := 0
				if len(statuses) > 0 {
					first = statuses[0]
				}
				switch {
				case tc.status == 0:
					if first != 0 && (first < 400 || first > 499) {
						t.Errorf("lb answered %d, want a 4xx or a closed connection; answer:\n%s", first, raw)
					}
				case first != tc.status:
					t.Errorf("lb answered %v, want %d first; answer:\n%s", statuses, tc.status, raw)
				}
				if len(got) != tc.backend {
					t.Fatalf("backend saw %d requests, want %d: %s", len(got), tc.backend, backendSummary(got))
				}
				for _, q := range got {
					if q.err != nil {
						t.Errorf("backend got a malformed request: %v\n%q", q.err, q.raw)
					}
					if q.extra != 0 {
						t.Errorf("backend got %d bytes behind a request", q.extra)
					}
				}
				if tc.check != nil && !t.Failed() {
					tc.check(t, got)
				}
			})
		}
	}
	if left := rec.leftovers(); len(left) > 0 {
		t.Errorf("backend connections hold bytes that are no request (connection: bytes): %v", left)
	}
	writeSmuggleTable(t, results)
}

// exchangeRaw writes req, half-closes, and reads every answer until lb
// closes the connection; it returns the final statuses (1xx skipped) and
// the raw answer.
func exchangeRaw(t *testing.T, c net.Conn, req string) ([]int, string) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(8 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Logf("write: %v", err) // lb may close before reading it all
	}
	switch cw := c.(type) {
	case *net.TCPConn:
		cw.CloseWrite()
	case *tls.Conn:
		cw.CloseWrite()
	}
	raw, err := io.ReadAll(c)
	if err != nil && !isReset(err) {
		t.Errorf("reading lb's answer: %v", err)
	}
	var statuses []int
	br := bufio.NewReader(bytes.NewReader(raw))
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 200 {
			statuses = append(statuses, resp.StatusCode)
		}
	}
	return statuses, string(raw)
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// shortRequest is a request for the table: control characters shown
// escaped, long runs shortened.
func shortRequest(req string) string {
	q := fmt.Sprintf("%q", req)
	q = q[1 : len(q)-1]
	q = strings.ReplaceAll(q, `Host: www.example.com\r\n`, `‹Host›`)
	if i := strings.Index(q, "aaaaaaaaaa"); i >= 0 {
		j := i
		for j < len(q) && q[j] == 'a' {
			j++
		}
		q = q[:i] + fmt.Sprintf("a×%d", j-i) + q[j:]
	}
	if i := strings.Index(q, `X-Many: `); i >= 0 {
		q = q[:i] + `X-Many: …×100` + q[strings.LastIndex(q, `\r\n\r\n`):]
	}
	if r := []rune(q); len(r) > 110 {
		q = string(r[:107]) + "…"
	}
	return strings.ReplaceAll(q, "|", `\|`)
}

func backendSummary(got []recorded) string {
	if len(got) == 0 {
		return "nothing"
	}
	var parts []string
	for _, q := range got {
		parts = append(parts, q.summary())
	}
	return strings.Join(parts, "; ")
}

// writeSmuggleTable leaves the results as a Markdown table in the
// artifacts folder (docs/reliability-smuggling.md holds one run's).
func writeSmuggleTable(t *testing.T, results []smuggleResult) {
	var sb strings.Builder
	sb.WriteString("| # | case | sent | lb answered | backend saw |\n|---|---|---|---|---|\n")
	for i, r := range results {
		fmt.Fprintf(&sb, "| %d | %s | `%s` | %s | %s |\n", i+1, r.name, r.sent, r.answer, strings.ReplaceAll(r.backend, "|", `\|`))
	}
	path := filepath.Join(artifactDir(t), "smuggling.md")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Error(err)
	}
	t.Logf("results table: %s", path)
}
