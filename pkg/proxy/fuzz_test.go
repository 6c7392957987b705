package proxy

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/httphead"
)

// fuzzMaxBody bounds the bodies FuzzPrepareRequest reads, as a listener's
// max_request_body does.
const fuzzMaxBody = 64 << 10

// FuzzPrepareRequest feeds raw client bytes through what lb does to an
// HTTP/1.1 request before a backend sees it: fasthttp reads the head and
// body as the server does, httphead.Check may refuse it, httphead.Prepare
// rewrites it, and fasthttp writes it as the transport does. Whatever
// reaches the wire must be one well-formed request that means what the
// client asked for and nothing more: a backend parsing it differently
// from lb is how requests are smuggled (RFC 9112 section 11.2).
func FuzzPrepareRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: t\r\nAccept: */*\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: keep-alive\r\nCookie: a=b\r\n\r\n",
		"GET /x HTTP/1.0\r\n\r\n",
		"HEAD /x HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n",
		"POST /form HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=1&b=2",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Client-Verify: SUCCESS\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTrailer: X-Client-Verify\r\n\r\n5\r\nhello\r\n0\r\nX-Client-Verify: SUCCESS\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTrailer: Proxy-Authorization, X-Forwarded-For\r\n\r\n0\r\nProxy-Authorization: Basic eDp5\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
		"PUT /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
		"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close, X-Secret, Keep-Alive\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: Host, Content-Length, X-Forwarded-For, Cookie\r\nCookie: a=b\r\n\r\n",
		"GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
		"POST /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX-Client-Verify: SUCCESS\r\nx-client-cert-subject: CN=admin\r\nX-CLIENT-Other: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX_Client_Verify: SUCCESS\r\nx-client_cert-subject: CN=admin\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX_Forwarded_For: 1.1.1.1\r\nX-Forwarded-Host: e1\r\nX-Forwarded-Host: e2\r\nx_forwarded-HOST: e3\r\nForwarded: host=e4\r\nX-Real-IP: 6.6.6.6\r\nX_Real_Ip: 7.7.7.7\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /p\r\nX-Forwarded-Ssl: on\r\nConnection: Forwarded, X-Real-IP\r\n\r\n",
		"GET http://b.example/p?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET https://user:pw@b.example:8443/p HTTP/1.1\r\n\r\n",
		"GET http://b.example HTTP/1.0\r\n\r\n",
		"GET /a/../b/./c//d%2F HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
		"TRACE / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX-Folded: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive\r\n\tX-Client-Verify: SUCCESS\r\n\r\n",
		"GET / HTTP/1.1\nHost: a.example\nX-A: b\n\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: b\rX-Client-Verify: SUCCESS\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: b\x00c\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nGET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n",
	} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, tls bool) {
		var ctx fasthttp.RequestCtx
		ctx.Init(&fasthttp.Request{}, clientAddr, nil)
		req := &ctx.Request
		// As fasthttp's server reads a request (with lb's
		// DisablePreParseMultipartForm).
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		if err := req.Header.Read(br); err != nil {
			return
		}
		// The server refuses a target and Host it cannot parse into a URI
		// before the handler runs (Request.parseURI).
		var u fasthttp.URI
		if err := u.Parse(req.Header.Host(), req.Header.RequestURI()); err != nil {
			return
		}
		if err := req.ContinueReadBody(br, fuzzMaxBody, false); err != nil {
			return
		}
		code, mask := httphead.Check(&ctx)
		if code != 0 {
			return
		}
		method := string(req.Header.Method())
		target := originForm(string(req.Header.RequestURI()))
		host := string(ctx.Host())
		body := string(req.Body())
		connNamed := connectionTokens(req.Header.PeekAll("Connection"))

		httphead.Prepare(&ctx, mask, httphead.Client{TLS: tls})
		// The transport writes the head as it is (upstream's
		// FuzzWriteRequest checks that it writes what Request.Write
		// does then): Request.Write, which takes the target and Host
		// from the parsed URI and adds Authorization for a userinfo,
		// must find nothing left to change.
		prepared := string(req.Header.Host()) + " " + string(req.Header.RequestURI()) + " " + string(req.Header.Peek("Authorization"))
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		if err := req.Write(bw); err != nil {
			t.Fatalf("an accepted request cannot be written: %v", err)
		}
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		sent := out.Bytes()
		if len(req.Header.PeekTrailerKeys()) > 0 {
			// The transport writes a request with trailers without the
			// Trailer field (upstream's writeChunked, which its
			// FuzzWriteRequest checks against Request.Write).
			if i := bytes.Index(sent, []byte("\r\nTrailer: ")); i >= 0 {
				if j := bytes.Index(sent[i+2:], []byte("\r\n")); j >= 0 {
					sent = append(sent[:i+2:i+2], sent[i+2+j+2:]...)
				}
			}
		}
		if got := string(req.Header.Host()) + " " + string(req.Header.RequestURI()) + " " + string(req.Header.Peek("Authorization")); got != prepared {
			t.Fatalf("the transport would write host, target and authorization %q; Request.Write writes %q:\n%q", prepared, got, sent)
		}

		// The backend reads exactly one request, the one the client sent.
		var back fasthttp.Request
		rb := bufio.NewReader(bytes.NewReader(sent))
		if err := back.Header.Read(rb); err != nil {
			t.Fatalf("backend cannot read the head lb sent: %v\n%q", err, sent)
		}
		if err := back.ContinueReadBody(rb, 0, false); err != nil {
			t.Fatalf("backend cannot read the body lb sent: %v\n%q", err, sent)
		}
		if rb.Buffered() != 0 {
			t.Fatalf("%d bytes left after the request lb sent, a second request to the backend:\n%q", rb.Buffered(), sent)
		}
		if got := string(back.Header.Method()); got != method {
			t.Fatalf("method %q became %q:\n%q", method, got, sent)
		}
		if got := string(back.Header.RequestURI()); got != target {
			t.Fatalf("target %q reached the backend as %q:\n%q", target, got, sent)
		}
		if got := string(back.Host()); got != host {
			t.Fatalf("host %q reached the backend as %q:\n%q", host, got, sent)
		}
		if got := string(back.Body()); got != body {
			t.Fatalf("body %q reached the backend as %q:\n%q", body, got, sent)
		}
		for _, k := range back.Header.PeekTrailerKeys() {
			if httphead.Reserved(k) {
				t.Fatalf("trailer field %q, lb's own, reached the backend:\n%q", k, sent)
			}
		}
		checkSentHead(t, sent, method, connNamed, tls)
	})
}

// originForm is the target a backend must get for one a client wrote:
// the same, or the path and query of an absolute form (RFC 9112 section
// 3.2.2), "/" when it has no path; a fragment, which no target may carry,
// and an empty query are dropped, as fasthttp does.
func originForm(target string) string {
	target, _, _ = strings.Cut(target, "#")
	target = strings.TrimSuffix(target, "?")
	_, rest, ok := strings.Cut(target, "://")
	if !ok || strings.HasPrefix(target, "/") {
		return target
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		if rest[i] == '?' {
			return "/" + rest[i:]
		}
		return rest[i:]
	}
	return "/"
}

// connectionTokens lists the lower-case names a client's Connection
// headers give.
func connectionTokens(values [][]byte) []string {
	var names []string
	for _, v := range values {
		for tok := range strings.SplitSeq(string(v), ",") {
			if tok = strings.ToLower(strings.TrimSpace(tok)); tok != "" {
				names = append(names, tok)
			}
		}
	}
	return names
}

// setByLB are headers lb or fasthttp's writer sets itself, so a client
// naming them in Connection does not make them hop-by-hop on the way out.
var setByLB = map[string]bool{
	"host": true, "content-length": true, "content-type": true, "authorization": true,
	"x-forwarded-for": true, "x-forwarded-proto": true, "x-forwarded-host": true,
	"x-forwarded-port": true, "x-real-ip": true, "forwarded": true,
	"upgrade": true, "connection": true, "transfer-encoding": true,
}

// checkSentHead reads the head lb wrote with a strict parser of its own
// (not fasthttp's) and checks what RFC 9112 and httphead.Prepare promise.
func checkSentHead(t *testing.T, sent []byte, method string, connNamed []string, tls bool) {
	t.Helper()
	end := bytes.Index(sent, []byte("\r\n\r\n"))
	if end < 0 {
		t.Fatalf("head does not end with an empty line:\n%q", sent)
	}
	lines := strings.Split(string(sent[:end]), "\r\n")
	if rl := lines[0]; strings.ContainsAny(rl, "\r\n\x00") || strings.Count(rl, " ") != 2 || !strings.HasSuffix(rl, " HTTP/1.1") {
		t.Fatalf("bad request line %q", rl)
	}
	fields := map[string][]string{}
	for _, line := range lines[1:] {
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || !isToken(name) {
			t.Fatalf("bad field line %q in:\n%q", line, sent)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			t.Fatalf("CR, LF or NUL in the value of %s:\n%q", name, sent)
		}
		lower := strings.ToLower(name)
		fields[lower] = append(fields[lower], strings.TrimSpace(value))
	}
	if n := len(fields["content-length"]); n > 1 {
		t.Fatalf("%d Content-Length fields:\n%q", n, sent)
	}
	if len(fields["content-length"]) > 0 && len(fields["transfer-encoding"]) > 0 {
		t.Fatalf("both Content-Length and Transfer-Encoding:\n%q", sent)
	}
	for _, name := range []string{"keep-alive", "proxy-connection", "te", "trailer", "proxy-authorization", "expect"} {
		if len(fields[name]) > 0 {
			t.Fatalf("hop-by-hop %s reached the backend:\n%q", name, sent)
		}
	}
	for name := range fields {
		// The prefix alone ("X-Client-") is no field lb sets.
		if n := strings.ReplaceAll(name, "_", "-"); strings.HasPrefix(n, "x-client-") && n != "x-client-" {
			t.Fatalf("client-sent %s reached the backend:\n%q", name, sent)
		}
	}
	for _, name := range connNamed {
		if !setByLB[name] && len(fields[name]) > 0 {
			t.Fatalf("%s, named in the client's Connection, reached the backend:\n%q", name, sent)
		}
	}
	// Only a WebSocket-style switch keeps Upgrade, and then with
	// "Connection: Upgrade" alone.
	if up := fields["upgrade"]; len(up) > 0 {
		if method != fasthttp.MethodGet || len(up) != 1 || strings.EqualFold(up[0], "h2c") ||
			len(fields["connection"]) != 1 || fields["connection"][0] != "Upgrade" {
			t.Fatalf("Upgrade passed on for a request that may not switch:\n%q", sent)
		}
	} else if len(fields["connection"]) > 0 {
		t.Fatalf("Connection %q passed on:\n%q", fields["connection"], sent)
	}
	if xff := fields["x-forwarded-for"]; len(xff) != 1 || !strings.HasSuffix(xff[0], clientAddr.IP.String()) {
		t.Fatalf("X-Forwarded-For %q does not end with the client's address:\n%q", xff, sent)
	}
	proto := "http"
	if tls {
		proto = "https"
	}
	if xfp := fields["x-forwarded-proto"]; len(xfp) != 1 || xfp[0] != proto {
		t.Fatalf("X-Forwarded-Proto %q, want %s:\n%q", xfp, proto, sent)
	}
	if ip := fields["x-real-ip"]; len(ip) != 1 || ip[0] != clientAddr.IP.String() {
		t.Fatalf("X-Real-IP %q, want the client's address:\n%q", ip, sent)
	}
	if fw := fields["forwarded"]; len(fw) != 1 || !strings.HasPrefix(fw[0], "for="+clientAddr.IP.String()+";") || !strings.HasSuffix(fw[0], ";proto="+proto) {
		t.Fatalf("Forwarded %q is not lb's:\n%q", fw, sent)
	}
	for _, name := range []string{"x-forwarded-host", "x-forwarded-port"} {
		if n := len(fields[name]); n != 1 {
			t.Fatalf("%d %s fields:\n%q", n, name, sent)
		}
	}
	for name := range fields {
		// Forwarding headers spelt with underscores, and those lb has
		// no word in, are a client's.
		switch strings.ReplaceAll(name, "_", "-") {
		case "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-real-ip", "forwarded":
			if strings.Contains(name, "_") {
				t.Fatalf("client-sent %s reached the backend:\n%q", name, sent)
			}
		case "x-forwarded-prefix", "x-forwarded-ssl", "x-forwarded-scheme":
			t.Fatalf("client-sent %s reached the backend:\n%q", name, sent)
		}
	}
}

// isToken reports whether s is an RFC 9110 token (a valid field name).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if strings.IndexByte("!#$%&'*+-.^_`|~", c) < 0 {
			return false
		}
	}
	return true
}
