// Package affinity is what sends a request to a backend the request
// itself decides rather than the pool's algorithm alone: the key that
// algorithm "hash" places on its ring (the client's address, the URI, a
// header or a cookie), and sticky-session cookies that name a backend
// through an HMAC.
package affinity

import (
	"bytes"
	"net"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/balancer"
	"github.com/offloadlb/lb/pkg/policy"
)

// KeyKind is what of a request a hash key is made of.
type KeyKind uint8

// The kinds of hash_key.
const (
	KeyNone     KeyKind = iota // no key: the pool is not hashed
	KeyClientIP                // client_ip: the client's address (the PROXY one behind accept_proxy_protocol)
	KeyURI                     // uri: the path and query
	KeyHeader                  // header:NAME
	KeyCookie                  // cookie:NAME
)

// Key is a pool's hash_key, parsed.
type Key struct {
	Kind KeyKind
	// Name is the header's or cookie's name for KeyHeader and KeyCookie.
	Name string
}

// NewKey is the key of a pool's hash_key, as config.ParseHashKey parsed
// it: kind client_ip, uri, header or cookie ("" for none).
func NewKey(kind, name string) Key {
	switch kind {
	case "client_ip":
		return Key{Kind: KeyClientIP}
	case "uri":
		return Key{Kind: KeyURI}
	case "header":
		return Key{Kind: KeyHeader, Name: name}
	case "cookie":
		return Key{Kind: KeyCookie, Name: name}
	}
	return Key{}
}

// String is the key as written in the config.
func (k Key) String() string {
	switch k.Kind {
	case KeyClientIP:
		return "client_ip"
	case KeyURI:
		return "uri"
	case KeyHeader:
		return "header:" + k.Name
	case KeyCookie:
		return "cookie:" + k.Name
	}
	return ""
}

// HTTPOnly reports whether the key needs an HTTP request (all but
// client_ip): a tcp listener's pool can hash only by client_ip.
func (k Key) HTTPOnly() bool { return k.Kind != KeyNone && k.Kind != KeyClientIP }

// Of returns the hash key of a request with head h from client, and
// false when the request has none (no such header or cookie, or an empty
// one), which then goes round robin. It allocates nothing.
func (k Key) Of(h *fasthttp.RequestHeader, client net.Addr) (uint64, bool) {
	switch k.Kind {
	case KeyClientIP:
		return ClientKey(client)
	case KeyURI:
		return balancer.HashKey(h.RequestURI()), true
	case KeyHeader:
		if v := h.Peek(k.Name); len(v) > 0 {
			return balancer.HashKey(v), true
		}
	case KeyCookie:
		if v := Cookie(h, k.Name); len(v) > 0 {
			return balancer.HashKey(v), true
		}
	}
	return 0, false
}

// ClientKey is the hash key of a client address: its IP (an IPv4
// address and its IPv6-mapped form alike), without the port.
func ClientKey(a net.Addr) (uint64, bool) {
	ip := policy.AddrOf(a)
	if !ip.IsValid() {
		return 0, false
	}
	b := ip.As16()
	return balancer.HashKey(b[:]), true
}

// Cookie returns the value of the request's cookie name, as sent, or
// nil. It reads the Cookie fields without fasthttp's RequestHeader.Cookie,
// which parses them and from then on writes the head out from its parse:
// that would change what the backend gets (cookies with a backslash or a
// quote inside dropped, quotes around values removed, several Cookie
// fields merged). It allocates nothing.
func Cookie(h *fasthttp.RequestHeader, name string) []byte {
	for _, field := range h.PeekAll("Cookie") {
		for len(field) > 0 {
			var pair []byte
			pair, field, _ = bytes.Cut(field, semicolon)
			k, v, ok := bytes.Cut(pair, equals)
			if ok && string(bytes.TrimSpace(k)) == name {
				return bytes.TrimSpace(v)
			}
		}
	}
	return nil
}

var semicolon, equals = []byte{';'}, []byte{'='}
