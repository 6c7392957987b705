package httphead

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
	hUpgrade         = []byte("Upgrade")
	hConnection      = []byte("Connection")
	hXClientVerify   = []byte("X-Client-Verify")
	hXClientSubject  = []byte("X-Client-Cert-Subject")
	protoHTTPS       = []byte("https")
	protoHTTP        = []byte("http")
	http11           = []byte("HTTP/1.1")
)

// Client is what lb knows of a request's client beyond the request: how
// it reached lb and, with client certificates, what its certificate
// said. The zero value is a plain-HTTP client without a certificate.
type Client struct {
	// TLS is whether the request came over TLS: X-Forwarded-Proto,
	// X-Forwarded-Port and Forwarded's proto say https.
	TLS bool
	// CertVerify and CertSubject are sent as X-Client-Verify and
	// X-Client-Cert-Subject; empty sends neither.
	CertVerify, CertSubject string
}

// Prepare turns a client request into the request for a backend, in
// place: hop-by-hop headers go, the forwarding headers (X-Forwarded-*,
// X-Real-IP, Forwarded) and with client certificates X-Client-* are lb's
// own, the target is sent in origin form exactly as the client wrote its
// path, and the backend connection is kept alive whatever the client
// asked for its own. A request to switch protocols (a WebSocket
// handshake) keeps Upgrade and Connection: Upgrade for the backend; every
// other loses them.
//
// mask is what Check found in the request; c is its client.
func Prepare(ctx *fasthttp.RequestCtx, mask Mask, c Client) {
	req := &ctx.Request
	h := &req.Header
	if len(h.PeekTrailerKeys()) > 0 {
		// Before Trailer goes with the hop-by-hop fields (see
		// keepTrailers).
		mask = keepTrailers(h, mask)
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
	// Request.Write would set them: the backend client writes the head as it
	// is.
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
	if c.TLS {
		h.SetCanonical(hXForwardedProto, protoHTTPS)
	} else {
		h.SetCanonical(hXForwardedProto, protoHTTP)
	}
	if len(host) > 0 {
		h.SetCanonical(hXForwardedHost, host)
	}
	h.SetCanonical(hXForwardedPort, forwardedPort(host, c.TLS))
	h.SetCanonical(hForwarded, appendForwarded(buf[:0], ctx.RemoteAddr(), host, c.TLS))
	if c.CertVerify != "" {
		h.SetCanonical(hXClientVerify, s2b(c.CertVerify))
		if c.CertSubject != "" {
			h.SetCanonical(hXClientSubject, s2b(c.CertSubject))
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

// requestHops are the fields only a request's hop-by-hop set has, by
// the bit that marks each.
var requestHops = [...]markedField{
	{hopTE, "Te"},
	{hopTrailer, "Trailer"},
	{hopUpgrade, "Upgrade"},
	{hopProxyAuthorization, "Proxy-Authorization"},
	{hopExpect, "Expect"},
}

func removeHopHeaders(h *fasthttp.RequestHeader, mask Mask) {
	dropCommon(h, mask)
	dropMarked(h, mask, requestHops[:])
	if mask&hopXClient != 0 {
		removeXClient(h)
	}
	if mask&hopForwarded != 0 {
		removeForwarding(h)
	}
}

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

// dropTrailers removes the trailer fields of a request (RFC 9112 section
// 7.1.2) and Trailer. They must go before Trailer does: deleting Trailer
// moves fasthttp's trailer fields among the header fields, past the check
// of the raw head, where a client's "X-Client-Verify: SUCCESS" would pass
// for lb's own. A header field also sent as a trailer field goes with it.
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

// keepTrailers keeps the trailer fields a request came with (an HTTP/2
// body, or a chunked one read whole), but those lb owns (Reserved), for
// the backend: it takes them out with dropTrailers, Trailer included, and
// puts the others back as trailer fields. It returns mask without
// Trailer, which is gone: deleting it again would move the trailer
// fields among the header fields. Trailers of a body that streams arrive
// after this, and are sent on the same way (pkg/upstream's
// writeTrailers).
//
//go:noinline
func keepTrailers(h *fasthttp.RequestHeader, mask Mask) Mask {
	keep := AppendTrailers(nil, h)
	dropTrailers(h)
	for len(keep) > 0 {
		line := keep
		if i := bytes.IndexByte(keep, '\n'); i >= 0 {
			line, keep = keep[:i+1], keep[i+1:]
		} else {
			keep = nil
		}
		if colon := bytes.IndexByte(line, ':'); colon > 0 { // not the blank line
			name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
			if h.AddTrailerBytes(name) == nil {
				h.AddBytesKV(name, value)
			}
		}
	}
	return mask &^ hopTrailer
}

// AppendTrailers appends to dst the trailer section of h as it goes to a
// backend: fasthttp keeps what it read after a chunked body (and refuses
// framing, routing and authentication fields); the fields lb owns
// (Reserved) are left out. It ends with the blank line.
func AppendTrailers(dst []byte, h *fasthttp.RequestHeader) []byte {
	section := h.TrailerHeader() // lines, and the blank line that ends them
	for len(section) > 0 {
		line := section
		if i := bytes.IndexByte(section, '\n'); i >= 0 {
			line, section = section[:i+1], section[i+1:]
		} else {
			section = nil
		}
		if colon := bytes.IndexByte(line, ':'); colon > 0 && Reserved(line[:colon]) {
			continue
		}
		dst = append(dst, line...)
	}
	return dst
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

// Reserved reports whether a field name is one lb sets for backends or
// strips from clients (the forwarding headers, X-Client-*), in any
// spelling: such a field is never passed on from a client, not even as
// a trailer field, where a backend that merges trailers into headers
// would take it for lb's.
func Reserved(name []byte) bool {
	return forwardingHeader(name) != fwNone || isXClient(name)
}
