// Package httphead checks and rewrites the heads of HTTP messages as they
// pass through lb: what a request must not carry to a backend (ambiguous
// framing, a bad Host, a method lb does not proxy), the request a backend
// gets (hop-by-hop fields gone, lb's forwarding fields, origin-form
// target) and the response a client gets (the backend's hop-by-hop fields
// gone). Its functions are pure: they read and change the message they
// are given and nothing else, allocate nothing in the common case, and
// are safe to call from any number of goroutines on different messages.
package httphead

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// Mask is what Check found in a request's head: which hop-by-hop fields
// it carries and what of its framing was refused. Prepare takes it so
// that the head is scanned once.
type Mask int

// Hop-by-hop headers (RFC 9110 section 7.6.1), found in one pass.
const (
	hopConnection Mask = 1 << iota
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

	// Not hop-by-hop: what Check refuses the request for.
	fieldContentLength
	fieldTransferEncoding
	badFold     // obs-fold: a line continuing the field before it
	badName     // a field name with a space in it
	badTransfer // Transfer-Encoding other than exactly "chunked"
	badLF       // a line of the head ended by a bare LF
)

// hopMask is the flags of headers Prepare removes.
const hopMask = fieldContentLength - 1

// badFraming is the flags of a request Check refuses.
const badFraming = badFold | badName | badTransfer | badLF

// Check rejects what must never reach a backend, returning the status to
// answer with (0 for none) and what scan found in the head, for Prepare.
// fasthttp itself already refuses malformed heads, duplicate
// Content-Length, unknown transfer codings, Transfer-Encoding in HTTP/1.0,
// duplicate Host and oversized heads and bodies (pkg/proxy's ServeError
// answers those); what it lets through and is refused here is what an
// HTTP/1.1 backend, or a proxy in front of lb, could frame differently.
// For a request without Host (HTTP/1.0 may omit it), it sets Host to the
// address the request reached.
func Check(ctx *fasthttp.RequestCtx) (code int, mask Mask) {
	h := &ctx.Request.Header
	if code, mask = CheckHead(h); code != 0 {
		return code, mask
	}
	// The Host field itself, not ctx.Host(): without one, fasthttp takes
	// the host from the target, even from an origin-form "//a/b" (a path
	// the backend would then get as "/b", on host a).
	if len(h.Host()) == 0 {
		// An HTTP/1.0 request may lack Host (CheckHead refuses an
		// HTTP/1.1 one); name the address it reached and parse the
		// target again beside it.
		h.SetHost(ctx.LocalAddr().String())
		ctx.Request.SetRequestURIBytes(h.RequestURI())
	}
	if hv := ctx.Host(); len(hv) == 0 || !validHost(hv) {
		// An absolute target with an empty authority ("http:///x")
		// overrides Host with nothing, and one with a bad authority
		// overrides it with what CheckHead would refuse in Host.
		return fasthttp.StatusBadRequest, mask
	}
	if t := h.RequestURI(); len(t) > 0 && t[0] != '/' && t[0] != '*' && userinfo(ctx) {
		// "http://user:pass@host/": RFC 9110 section 4.2.4 has a
		// recipient treat userinfo in an http(s) target as an error;
		// passed on, it would become a backend's Authorization.
		return fasthttp.StatusBadRequest, mask
	}
	return 0, mask
}

// userinfo reports whether the request's target has user information.
//
//go:noinline
func userinfo(ctx *fasthttp.RequestCtx) bool {
	u := ctx.Request.URI()
	return len(u.Username()) > 0 || len(u.Password()) > 0
}

// CheckHead is the part of Check that needs the head alone, so
// that a server's HeaderReceived hook can refuse a request before its body is read.
func CheckHead(h *fasthttp.RequestHeader) (code int, mask Mask) {
	if h.IsConnect() || h.IsTrace() {
		return fasthttp.StatusMethodNotAllowed, 0
	}
	if !h.IsHTTP11() {
		// fasthttp takes any HTTP/d.d; a major version other than 1
		// is not HTTP/1 (RFC 9110 section 15.6.6). A higher minor
		// version is read as HTTP/1.1's family (RFC 9110 section 2.5).
		if p := h.Protocol(); len(p) < 6 || p[5] != '1' {
			return fasthttp.StatusHTTPVersionNotSupported, 0
		}
	}
	mask = scan(h)
	switch {
	case mask&badFraming != 0:
		// Folded lines (RFC 9112 section 5.2 allows a 400), a space in
		// a field name, Transfer-Encoding other than chunked, a line
		// ended by a bare LF.
		return fasthttp.StatusBadRequest, mask
	case mask&(fieldContentLength|fieldTransferEncoding) == fieldContentLength|fieldTransferEncoding:
		// The classic request smuggling set-up (RFC 9112 section 6.3):
		// refuse rather than pick one.
		return fasthttp.StatusBadRequest, mask
	}
	if hv := h.Host(); len(hv) > 0 && !validHost(hv) {
		return fasthttp.StatusBadRequest, mask // RFC 9112 section 3.2
	}
	if len(h.Host()) == 0 && h.IsHTTP11() {
		// RFC 9112 section 3.2, whatever the target's form; RFC 9113
		// section 8.3.1 for HTTP/2 requests without :authority.
		return fasthttp.StatusBadRequest, mask
	}
	return 0, mask
}

// hostChars are the bytes of a reg-name or IPv4 address (unreserved,
// pct-encoded and sub-delims, RFC 3986 section 3.2.2), and ':' for the
// port.
var hostChars = func() (t [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=:") {
		t[c] = true
	}
	return t
}()

// validHost reports whether a Host value is uri-host [":" port] (RFC
// 9110 section 7.2): no userinfo, path, space or control character.
func validHost(h []byte) bool {
	if h[0] == '[' {
		// IP-literal: hex digits, ':' and '.' (IPv6, with an IPv4 tail),
		// then an optional port.
		end := bytes.IndexByte(h, ']')
		if end < 0 {
			return false
		}
		for _, c := range h[1:end] {
			if !(c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f' || c == ':' || c == '.') {
				return false
			}
		}
		h = h[end+1:]
		if len(h) == 0 {
			return true
		}
		if h[0] != ':' {
			return false
		}
	}
	colon := bytes.IndexByte(h, ':')
	for i, c := range h {
		if !hostChars[c] || c == ':' && i != colon || i > colon && colon >= 0 && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// Idempotent reports whether a request's method is idempotent (RFC 9110
// section 9.2.2): one that may be sent again to another backend after a
// failure part-way.
func Idempotent(h *fasthttp.RequestHeader) bool {
	switch string(h.Method()) {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
		return true
	}
	return false
}

// StripPort removes ":port" from a Host value ("[::1]:8443" -> "[::1]").
func StripPort(host []byte) []byte {
	i := bytes.LastIndexByte(host, ':')
	if i < 0 || bytes.IndexByte(host[i:], ']') >= 0 {
		return host
	}
	return host[:i]
}

// scan reports which hop-by-hop headers a request carries,
// whether it has more than one X-Forwarded-For or Connection, and what
// of its framing and syntax fasthttp lets through but a backend may read
// another way (see Check). It reads the raw head as received:
// fasthttp's header iterator would parse and re-serialise the cookies of
// every request, and has already unfolded folded lines.
func scan(h *fasthttp.RequestHeader) (mask Mask) {
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
