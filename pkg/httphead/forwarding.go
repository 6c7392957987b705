package httphead

import (
	"bytes"
	"net"

	"github.com/valyala/fasthttp"
)

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
	if h := StripPort(host); len(h) < len(host) && len(host)-len(h) > 1 {
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
