package affinity

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"time"

	"go.uber.org/atomic"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/balancer"
)

// Sticky is a pool's cookie persistence ([pool.sticky]): a client that
// has the cookie goes back to the backend it names while that backend is
// up (drained or not), and a client without it, or whose backend is down,
// gone or unknown, gets the cookie of the backend that answers.
//
// The cookie's value is a token: the first 16 bytes of an HMAC-SHA256,
// under a secret, of the pool's name and the backend's address, in
// base64url (22 characters). It names the backend without giving its
// address away, it cannot be made up for a backend without the secret
// (a forged or stale token names no backend and is replaced), and every
// lb with the same secret file makes the same tokens, so that clients
// keep their backend across a farm of lb instances and across restarts.
// A per-process secret (the default) keeps them across reloads.
type Sticky struct {
	// Cookie is the cookie's name.
	Cookie string
	// tokens holds each backend's token, at its Index; byToken the
	// reverse.
	tokens  []string
	byToken map[string]int
	// setCookie holds each backend's Set-Cookie value, at its Index,
	// with Secure and without: built once, so that setting it on an
	// answer allocates nothing.
	setCookie, setCookieSecure [][]byte
	// secure is the secure setting: 1 always, 0 never, -1 over TLS.
	secure int8
	// Stats counts the cookies given; a reload hands them on (see
	// NewSticky).
	Stats *StickyStats
}

// StickyStats counts the sticky cookies a pool gave: to clients without
// one (or with one that names no backend of the pool), and to clients
// whose backend could not take the request.
type StickyStats struct {
	New, Moved atomic.Uint64
}

// StickyConfig is [pool.sticky] as the proxy needs it.
type StickyConfig struct {
	Cookie   string
	MaxAge   time.Duration // 0: a session cookie
	Secure   *bool         // nil: when the request came over TLS
	HTTPOnly bool
	SameSite string // lax | strict | none
	Domain   string
	Path     string // "" is "/"
}

// NewSticky makes the tokens of pool's backends (backends, by Index)
// under secret. stats carries the counts of the pool's previous config
// over a reload; nil starts them at zero.
func NewSticky(c StickyConfig, pool string, backends []*balancer.Backend, secret []byte, stats *StickyStats) *Sticky {
	if stats == nil {
		stats = &StickyStats{}
	}
	s := &Sticky{
		Stats:           stats,
		Cookie:          c.Cookie,
		tokens:          make([]string, len(backends)),
		byToken:         make(map[string]int, len(backends)),
		setCookie:       make([][]byte, len(backends)),
		setCookieSecure: make([][]byte, len(backends)),
		secure:          -1,
	}
	if c.Secure != nil {
		s.secure = 0
		if *c.Secure {
			s.secure = 1
		}
	}
	for i, b := range backends {
		tok := Token(secret, pool, b.Address)
		s.tokens[i] = tok
		s.byToken[tok] = i
		s.setCookie[i] = cookieValue(c, tok, false)
		s.setCookieSecure[i] = cookieValue(c, tok, true)
	}
	return s
}

// Token is the sticky cookie's value for the backend at addr of pool,
// under secret.
func Token(secret []byte, pool, addr string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("lb sticky\x00"))
	m.Write([]byte(pool))
	m.Write([]byte{0})
	m.Write([]byte(addr))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

func cookieValue(c StickyConfig, tok string, secure bool) []byte {
	path := c.Path
	if path == "" {
		path = "/"
	}
	v := []byte(c.Cookie + "=" + tok + "; Path=" + path)
	if c.Domain != "" {
		v = append(v, "; Domain="+c.Domain...)
	}
	if c.MaxAge > 0 {
		v = append(v, "; Max-Age="+strconv.FormatInt(int64(c.MaxAge/time.Second), 10)...)
	}
	if secure {
		v = append(v, "; Secure"...)
	}
	if c.HTTPOnly {
		v = append(v, "; HttpOnly"...)
	}
	switch c.SameSite {
	case "strict":
		v = append(v, "; SameSite=Strict"...)
	case "none":
		v = append(v, "; SameSite=None"...)
	default:
		v = append(v, "; SameSite=Lax"...)
	}
	return v
}

// Backend returns the Index of the backend the request's cookie names,
// or -1 when it has no cookie or one that names no backend of the pool.
func (s *Sticky) Backend(h *fasthttp.RequestHeader) int {
	v := Cookie(h, s.Cookie)
	if len(v) == 0 {
		return -1
	}
	if i, ok := s.byToken[string(v)]; ok {
		return i
	}
	return -1
}

// Set gives the client of an answer from the backend at Index i the
// cookie that names it; tls is whether the request came over TLS (the
// default Secure), and moved whether the client's cookie named a
// backend that could not take the request.
func (s *Sticky) Set(h *fasthttp.ResponseHeader, i int, tls, moved bool) {
	if moved {
		s.Stats.Moved.Inc()
	} else {
		s.Stats.New.Inc()
	}
	v := s.setCookie[i]
	if s.secure == 1 || s.secure == -1 && tls {
		v = s.setCookieSecure[i]
	}
	h.AddBytesKV(setCookieName, v)
}

// TokenOf is the token of the backend at Index i (for /status).
func (s *Sticky) TokenOf(i int) string { return s.tokens[i] }

var setCookieName = []byte("Set-Cookie")
