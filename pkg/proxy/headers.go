package proxy

import (
	"bytes"
	"net"
	"net/netip"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// Header names in fasthttp's canonical form (it normalises names it
// parses), so that they can be compared and set without normalising again.
var (
	hXForwardedFor   = []byte("X-Forwarded-For")
	hXForwardedProto = []byte("X-Forwarded-Proto")
	hXForwardedHost  = []byte("X-Forwarded-Host")
	hXForwardedPort  = []byte("X-Forwarded-Port")
	hXRealIP         = []byte("X-Real-Ip")
	hForwarded       = []byte("Forwarded")
	hSTS             = []byte("Strict-Transport-Security")
	hLocation        = []byte("Location")
	hUpgrade         = []byte("Upgrade")
	hConnection      = []byte("Connection")
	hXClientVerify   = []byte("X-Client-Verify")
	hXClientSubject  = []byte("X-Client-Cert-Subject")
	protoHTTPS       = []byte("https")
	protoHTTP        = []byte("http")
	http11           = []byte("HTTP/1.1")
)

// Hop-by-hop headers (RFC 9110 section 7.6.1), found in one pass.
const (
	hopConnection = 1 << iota
	hopKeepAlive
	hopProxyConnection
	hopTE
	hopTrailer
	hopUpgrade
	hopProxyAuthorization
	hopExpect
	hopManyXFF
	hopManyConnection
	hopXClient   // X-Client-*: set by lb alone
	hopForwarded // a forwarding header lb writes or removes (see forwardingHeader)

	// Not hop-by-hop: what checkRequest refuses the request for.
	fieldContentLength
	fieldTransferEncoding
	badFold     // obs-fold: a line continuing the field before it
	badName     // a field name with a space in it
	badTransfer // Transfer-Encoding other than exactly "chunked"
	badLF       // a line of the head ended by a bare LF
)

// hopMask is the flags of headers prepareRequest removes.
const hopMask = fieldContentLength - 1

// badFraming is the flags of a request checkRequest refuses.
const badFraming = badFold | badName | badTransfer | badLF

// scanRequestHeaders reports which hop-by-hop headers a request carries,
// whether it has more than one X-Forwarded-For or Connection, and what
// of its framing and syntax fasthttp lets through but a backend may read
// another way (see checkRequest). It reads the raw head as received:
// fasthttp's header iterator would parse and re-serialise the cookies of
// every request, and has already unfolded folded lines.
func scanRequestHeaders(h *fasthttp.RequestHeader) (mask int) {
	raw := h.RawHeaders()
	xff, conn := 0, 0
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
			if len(line) == 0 || line[len(line)-1] != '\r' {
				// fasthttp ends a line at a bare LF, and the head at a
				// bare-LF blank line if a CRLFCRLF comes later: whether
				// bytes are a second request would depend on what
				// follows them. A bare LF in a field value may be
				// refused (RFC 9110 section 5.5, RFC 9112 section 2.2).
				mask |= badLF
			}
		} else {
			raw = nil
		}
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			mask |= badFold
			continue
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue // not a field line (the blank line ending the head)
		}
		name := line[:colon]
		if bytes.IndexByte(name, ' ') >= 0 || bytes.IndexByte(name, '\t') >= 0 {
			// fasthttp accepts "X A: b" (and passes it on as it is);
			// a field name is a token (RFC 9110 section 5.1).
			mask |= badName
			continue
		}
		if name[0]|0x20 == 'x' && isXClient(name) {
			mask |= hopXClient
			continue
		}
		if fw := forwardingHeader(name); fw != 0 {
			if fw == fwXFF {
				if xff++; xff > 1 {
					mask |= hopManyXFF
				}
			} else {
				mask |= hopForwarded
			}
			continue
		}
		switch len(name) {
		case 14:
			if bytes.EqualFold(name, []byte("content-length")) {
				mask |= fieldContentLength
			}
		case 17:
			if bytes.EqualFold(name, []byte("transfer-encoding")) {
				mask |= fieldTransferEncoding
				// fasthttp takes "identity" for no body at all and lets
				// what follows be read as the next request; chunked is
				// the only coding lb understands (RFC 9112 section 6.1).
				if v := bytes.Trim(line[colon+1:], " \t\r"); !bytes.EqualFold(v, []byte("chunked")) {
					mask |= badTransfer
				}
			}
		case 2:
			if bytes.EqualFold(name, []byte("te")) {
				mask |= hopTE
			}
		case 6:
			if bytes.EqualFold(name, []byte("expect")) {
				mask |= hopExpect
			}
		case 7:
			if bytes.EqualFold(name, []byte("trailer")) {
				mask |= hopTrailer
			} else if bytes.EqualFold(name, []byte("upgrade")) {
				mask |= hopUpgrade
			}
		case 10:
			if bytes.EqualFold(name, []byte("connection")) {
				mask |= hopConnection
				if conn++; conn > 1 {
					mask |= hopManyConnection
				}
			} else if bytes.EqualFold(name, []byte("keep-alive")) {
				mask |= hopKeepAlive
			}
		case 16:
			if bytes.EqualFold(name, []byte("proxy-connection")) {
				mask |= hopProxyConnection
			}
		case 19:
			if bytes.EqualFold(name, []byte("proxy-authorization")) {
				mask |= hopProxyAuthorization
			}
		}
	}
	return mask
}

// prepareRequest turns a client request into the request for a backend, in
// place: hop-by-hop headers go, the forwarding headers (X-Forwarded-*,
// X-Real-IP, Forwarded) and with client certificates X-Client-* are
// lb's own, the target is sent in origin form
// exactly as the client wrote its path, and the backend connection is
// kept alive whatever the client asked for its own. A request to switch
// protocols (a WebSocket handshake) keeps Upgrade and Connection: Upgrade
// for the backend; every other loses them.
//
// mask is what scanRequestHeaders found in the request.
func prepareRequest(ctx *fasthttp.RequestCtx, tls bool, mask int) {
	req := &ctx.Request
	h := &req.Header
	if len(h.PeekTrailerKeys()) > 0 {
		// Before Trailer goes with the hop-by-hop fields (see
		// dropTrailers).
		dropTrailers(h)
	}
	if mask&hopMask != 0 {
		var proto []byte
		if mask&(hopUpgrade|hopConnection) == hopUpgrade|hopConnection {
			proto = upgradeProto(h)
		}
		removeHopHeaders(h, mask)
		if proto != nil {
			h.SetCanonical(hUpgrade, proto)
			h.SetCanonical(hConnection, hUpgrade) // "Connection: Upgrade"
		}
	}
	h.ResetConnectionClose()
	// A body without a type goes without one; fasthttp would add
	// application/octet-stream.
	h.SetNoDefaultContentType(true)
	if !h.IsHTTP11() {
		h.SetProtocolBytes(http11)
	}
	// The target in origin form, exactly as the client wrote its path, and
	// Host from the parsed target (an absolute form's authority wins), as
	// Request.Write would set them; writeRequest writes the head as is.
	uri := req.URI()
	uri.DisablePathNormalizing = true
	host := uri.Host()
	h.SetHostBytes(host)
	h.SetRequestURIBytes(uri.RequestURI())

	var buf [256]byte
	b := buf[:0]
	if mask&hopManyXFF != 0 {
		// Several X-Forwarded-For headers make one list (RFC 9110 5.3).
		for i, v := range h.PeekAll("X-Forwarded-For") {
			if i > 0 {
				b = append(b, ", "...)
			}
			b = append(b, v...)
		}
		h.DelBytes(hXForwardedFor)
	} else {
		b = append(b, h.PeekBytes(hXForwardedFor)...)
	}
	if len(b) > 0 {
		b = append(b, ", "...)
	}
	ipStart := len(b)
	b = appendClientIP(b, ctx.RemoteAddr())
	h.SetCanonical(hXForwardedFor, b)
	// Every other forwarding header is lb's alone: removeHopHeaders took
	// the client's copies away, so these set the only ones.
	h.SetCanonical(hXRealIP, b[ipStart:])
	if tls {
		h.SetCanonical(hXForwardedProto, protoHTTPS)
	} else {
		h.SetCanonical(hXForwardedProto, protoHTTP)
	}
	if len(host) > 0 {
		h.SetCanonical(hXForwardedHost, host)
	}
	h.SetCanonical(hXForwardedPort, forwardedPort(host, tls))
	h.SetCanonical(hForwarded, appendForwarded(buf[:0], ctx.RemoteAddr(), host, tls))
	if c := tlsConn(ctx.Conn()); c != nil && c.ClientVerify != "" {
		h.SetCanonical(hXClientVerify, s2b(c.ClientVerify))
		if c.ClientSubject != "" {
			h.SetCanonical(hXClientSubject, s2b(c.ClientSubject))
		}
	}
}

// upgradeProto returns a copy of the protocol an HTTP/1.1 GET asks to
// switch to (Upgrade, named in Connection), or nil. h2c is not passed on:
// lb speaks HTTP/2 to clients itself and HTTP/1.1 to backends.
func upgradeProto(h *fasthttp.RequestHeader) []byte {
	if !h.IsGet() || !h.IsHTTP11() {
		return nil
	}
	named := false
	for _, v := range h.PeekAll("Connection") {
		for len(v) > 0 && !named {
			var tok []byte
			tok, v, _ = bytes.Cut(v, []byte{','})
			named = bytes.EqualFold(bytes.TrimSpace(tok), []byte("upgrade"))
		}
	}
	p := h.PeekBytes(hUpgrade)
	if !named || len(p) == 0 || bytes.EqualFold(p, []byte("h2c")) {
		return nil
	}
	return append([]byte(nil), p...)
}

// s2b is a string's bytes, for header setters that copy them.
func s2b(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

func removeHopHeaders(h *fasthttp.RequestHeader, mask int) {
	dropCommon(h, mask)
	if mask&hopTE != 0 {
		h.Del("Te")
	}
	if mask&hopTrailer != 0 {
		h.Del("Trailer")
	}
	if mask&hopUpgrade != 0 {
		h.Del("Upgrade")
	}
	if mask&hopProxyAuthorization != 0 {
		h.Del("Proxy-Authorization")
	}
	if mask&hopExpect != 0 {
		h.Del("Expect")
	}
	if mask&hopXClient != 0 {
		removeXClient(h)
	}
	if mask&hopForwarded != 0 {
		removeForwarding(h)
	}
}

// What forwardingHeader finds.
const (
	fwNone = iota
	fwXFF  // X-Forwarded-For as lb appends to it: hyphens only
	fwOwned
)

// forwardingNames are the forwarding headers lb answers for, in lower
// case. A backend (Rack, Spring, Django, Express behind "trust proxy")
// takes them as the word of the proxy in front of it, so a client's copy
// must never reach it: lb writes its own X-Forwarded-Proto, -Host, -Port,
// X-Real-IP and Forwarded (RFC 7239), and removes the rest, which lb has
// nothing to say in (a path prefix, another name for the scheme).
var forwardingNames = [...]string{
	"x-forwarded-for",
	"x-forwarded-proto",
	"x-forwarded-host",
	"x-forwarded-port",
	"x-forwarded-prefix",
	"x-forwarded-ssl",
	"x-forwarded-scheme",
	"x-real-ip",
	"forwarded",
}

// forwardingHeader reports whether a field name is one of
// forwardingNames, in any case and with underscores for any of its
// hyphens: CGI-style backends (FastCGI, WSGI, PHP) read X_Forwarded_Host
// as HTTP_X_FORWARDED_HOST, the same variable as X-Forwarded-Host. Only
// X-Forwarded-For spelt with hyphens is fwXFF, the list lb appends to;
// every other spelling of it is a client's forgery and goes.
func forwardingHeader(name []byte) int {
	if len(name) < len("forwarded") || len(name) > len("x-forwarded-scheme") {
		return fwNone
	}
	if c := name[0] | 0x20; c != 'x' && c != 'f' {
		return fwNone
	}
	for _, n := range forwardingNames {
		if len(n) != len(name) {
			continue
		}
		under := false
		i := 0
		for ; i < len(n); i++ {
			c := name[i]
			switch {
			case c == '_':
				c, under = '-', true
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			}
			if c != n[i] {
				break
			}
		}
		if i < len(n) {
			continue
		}
		if n == "x-forwarded-for" && !under {
			return fwXFF
		}
		return fwOwned
	}
	return fwNone
}

// removeForwarding removes every copy of the forwarding headers lb owns
// (all but X-Forwarded-For spelt with hyphens), in every spelling the
// client used. It reads the names from the raw head and deletes by them:
// fasthttp deletes every field of a name, and normalises the name given
// as it normalised the fields it parsed, so nothing is copied.
func removeForwarding(h *fasthttp.RequestHeader) {
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		if name := line[:colon]; forwardingHeader(name) == fwOwned {
			h.DelBytes(name)
		}
	}
}

// appendForwarded appends lb's Forwarded element (RFC 7239 section 4):
// the client's address, the host it asked for and the scheme. An IPv6
// address is bracketed and quoted (section 6), a host that is not a
// token quoted (with its port, or an IP literal).
func appendForwarded(b []byte, client net.Addr, host []byte, tls bool) []byte {
	b = append(b, "for="...)
	start := len(b)
	b = appendClientIP(b, client)
	if bytes.IndexByte(b[start:], ':') >= 0 {
		// IPv6: for="[2001:db8::1]".
		ip := len(b) - start
		b = append(b, "\"[]\""...)
		copy(b[start+2:], b[start:start+ip])
		b[start], b[start+1] = '"', '['
		b[start+2+ip] = ']'
	}
	if len(host) > 0 {
		b = append(b, ";host="...)
		b = appendToken(b, host)
	}
	if tls {
		b = append(b, ";proto=https"...)
	} else {
		b = append(b, ";proto=http"...)
	}
	return b
}

// appendToken appends v as a token, or a quoted string where it is not
// one (RFC 9110 section 5.6.4).
func appendToken(b, v []byte) []byte {
	token := true
	for _, c := range v {
		if !tokenChars[c] {
			token = false
			break
		}
	}
	if token {
		return append(b, v...)
	}
	b = append(b, '"')
	for _, c := range v {
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}

// tokenChars are the bytes of a token (RFC 9110 section 5.6.2).
var tokenChars = func() (t [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~") {
		t[c] = true
	}
	return t
}()

// forwardedPort is the port the client asked for: the one in Host, else
// the scheme's (a browser leaves 443 and 80 out of Host). Backends build
// their links from X-Forwarded-Host and X-Forwarded-Port, so the two must
// name the same origin.
func forwardedPort(host []byte, tls bool) []byte {
	if h := stripPort(host); len(h) < len(host) && len(host)-len(h) > 1 {
		return host[len(h)+1:]
	}
	if tls {
		return port443
	}
	return port80
}

var (
	port443 = []byte("443")
	port80  = []byte("80")
)

// isXClient reports whether a field name is X-Client-* with something
// after the prefix, written with hyphens or underscores: CGI-style
// backends (FastCGI, WSGI, PHP) read both X-Client-Verify and
// X_Client_Verify as HTTP_X_CLIENT_VERIFY.
func isXClient(name []byte) bool {
	const prefix = "x-client-"
	if len(name) <= len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := name[i]
		switch {
		case c == '_':
			c = '-'
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// dropTrailers removes the trailer fields that ended a chunked request
// body (RFC 9112 section 7.1.2), as HTTP/2 trailers are: lb buffers the
// body and sends it with Content-Length. They must go before Trailer
// does: deleting Trailer moves fasthttp's trailer fields among the header
// fields, past the check of the raw head, where a client's
// "X-Client-Verify: SUCCESS" would pass for lb's own. A header field also
// sent as a trailer field goes with it.
func dropTrailers(h *fasthttp.RequestHeader) {
	var tmp [4][]byte
	names := tmp[:0]
	for _, k := range h.PeekTrailerKeys() {
		names = append(names, append([]byte(nil), k...))
	}
	for _, k := range names {
		h.DelBytes(k)
	}
	h.Del("Trailer")
}

// removeXClient removes every X-Client-* header a client sent: backends
// trust them as lb's word on the client certificate.
func removeXClient(h *fasthttp.RequestHeader) {
	var names [][]byte
	for k := range h.All() {
		if isXClient(k) {
			names = append(names, append([]byte(nil), k...))
		}
	}
	for _, k := range names {
		h.DelBytes(k)
	}
}

// noBody reports statuses whose responses never have a body (RFC 9112
// section 6.3).
func noBody(code int) bool {
	return code < 200 || code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified
}

// cleanResponse removes the backend's hop-by-hop headers from a response.
func cleanResponse(h *fasthttp.ResponseHeader) {
	mask, conn := 0, 0
	for k := range h.All() {
		switch len(k) {
		case 7:
			if string(k) == "Upgrade" {
				mask |= hopUpgrade
			}
		case 10:
			switch string(k) {
			case "Connection":
				mask |= hopConnection
				if conn++; conn > 1 {
					mask |= hopManyConnection
				}
			case "Keep-Alive":
				mask |= hopKeepAlive
			}
		case 16:
			if string(k) == "Proxy-Connection" {
				mask |= hopProxyConnection
			}
		}
	}
	if mask == 0 {
		return
	}
	dropCommon(h, mask)
	if mask&hopUpgrade != 0 {
		h.Del("Upgrade")
	}
}

// plainConnection reports a Connection value that names no other header:
// "keep-alive" or "close", the common cases, handled without allocating.
func plainConnection(v []byte) bool {
	return bytes.EqualFold(v, []byte("keep-alive")) || bytes.EqualFold(v, []byte("close"))
}

// headerEditor is what request and response headers have in common.
type headerEditor interface {
	Peek(key string) []byte
	PeekAll(key string) [][]byte
	Del(key string)
	DelBytes(key []byte)
}

// dropCommon removes Connection (and every header it names, which is
// hop-by-hop too), Keep-Alive and Proxy-Connection. The common
// "Connection: keep-alive" takes a path that does not allocate.
func dropCommon(h headerEditor, mask int) {
	if mask&hopConnection != 0 && (mask&hopManyConnection != 0 || !plainConnection(h.Peek("Connection"))) {
		// Copy the values: deleting headers moves the storage they are in.
		var tmp [128]byte
		conn := tmp[:0]
		for _, v := range h.PeekAll("Connection") {
			conn = append(append(conn, v...), ',')
		}
		for len(conn) > 0 {
			var tok []byte
			tok, conn, _ = bytes.Cut(conn, []byte{','})
			if tok = bytes.TrimSpace(tok); len(tok) > 0 {
				h.DelBytes(tok)
			}
		}
	}
	if mask&hopConnection != 0 {
		h.Del("Connection")
	}
	if mask&hopKeepAlive != 0 {
		h.Del("Keep-Alive")
	}
	if mask&hopProxyConnection != 0 {
		h.Del("Proxy-Connection")
	}
}

// appendClientIP appends the IP of a client address, without allocating.
func appendClientIP(b []byte, a net.Addr) []byte {
	switch a := a.(type) {
	case *net.TCPAddr:
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			return ip.Unmap().AppendTo(b)
		}
	case nil:
		return b
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return append(b, a.String()...)
	}
	return append(b, host...)
}
