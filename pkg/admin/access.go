package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/http"
	"strings"

	"github.com/offloadlb/lb/pkg/config"
)

// access is who may use the admin server: the bearer token and the extra
// names accepted in Host. It is replaced whole on reload.
type access struct {
	token    [sha256.Size]byte // SHA-256 of the token, compared in constant time
	hasToken bool
	exact    map[string]bool // lower-case names
	suffixes []string        // ".ops.example" for "*.ops.example"
}

func newAccess(token string, hosts []string) *access {
	a := &access{exact: map[string]bool{}}
	if token != "" {
		a.token, a.hasToken = sha256.Sum256([]byte(token)), true
	}
	for _, h := range hosts {
		h = normalHost(h)
		if rest, ok := strings.CutPrefix(h, "*."); ok {
			a.suffixes = append(a.suffixes, "."+rest)
		} else {
			a.exact[h] = true
		}
	}
	return a
}

// SetAccess replaces the bearer token ("" for none) and the names
// accepted in Host besides the built-in ones; requests already past the
// check are not affected. Safe to call while serving.
func (s *Server) SetAccess(token string, hosts []string) {
	s.access.Store(newAccess(token, hosts))
}

// tokenOK reports whether r carries "Authorization: Bearer <token>" with
// the configured token. Both sides are hashed first, so the comparison
// takes the same time whatever the length or content of the guess.
func (a *access) tokenOK(r *http.Request) bool {
	if !a.hasToken {
		return false
	}
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	return subtle.ConstantTimeCompare(got[:], a.token[:]) == 1
}

// hostAllowed reports whether Host names this admin server in a way that
// DNS rebinding cannot fake: an IP address (a browser sends the address
// it was given, and no one can make an address mean another machine),
// localhost and the names under it (RFC 6761; browsers resolve them to
// loopback themselves), the name the server was bound to, or a name from
// global.admin_hosts. An attacker's own name, pointed at this address,
// is none of these.
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" || net.ParseIP(host) != nil || config.IsLocalhostName(host) {
		return true
	}
	host = normalHost(host)
	if host == s.bindHost {
		return true
	}
	a := s.access.Load()
	if a.exact[host] {
		return true
	}
	for _, suf := range a.suffixes {
		if strings.HasSuffix(host, suf) {
			return true
		}
	}
	return false
}

func normalHost(h string) string { return strings.ToLower(strings.TrimSuffix(h, ".")) }

// alwaysOpen reports the endpoints every caller may read whatever its Host or
// token: container health checks and lb -healthcheck ask /healthz, and
// Prometheus scrapes /metrics under whatever name its service discovery
// knows.
func alwaysOpen(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && (r.URL.Path == "/healthz" || r.URL.Path == "/metrics")
}

// guard enforces, in order: a Host that is this server's (else 403), for
// state-changing requests and the profiler no cross-site browser request
// (else 403), and, when a token is configured, that token (else 401). A
// request with the right token passes the Host check, since a page
// behind a rebound name cannot know it. Refusals are logged without the
// request's credentials.
func (s *Server) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if alwaysOpen(r) {
			h.ServeHTTP(w, r)
			return
		}
		a := s.access.Load()
		tokenOK := a.tokenOK(r)
		if !tokenOK && !s.hostAllowed(r.Host) {
			s.refuse(w, r, http.StatusForbidden, "Host not accepted",
				"this Host is not a name of lb's admin server: use its address, localhost, or a name listed in global.admin_hosts")
			return
		}
		acts := r.Method != http.MethodGet && r.Method != http.MethodHead || strings.HasPrefix(r.URL.Path, "/debug/pprof/")
		if !acts {
			h.ServeHTTP(w, r)
			return
		}
		if err := s.crossOriginCheck(r); err != nil {
			s.refuse(w, r, http.StatusForbidden, err.Error(), "cross-origin request refused")
			return
		}
		if a.hasToken && !tokenOK {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lb admin"`)
			why := "no token"
			if r.Header.Get("Authorization") != "" {
				why = "wrong token"
			}
			s.refuse(w, r, http.StatusUnauthorized, why,
				"this needs the admin token (global.admin_token): send Authorization: Bearer <token>")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// crossOriginCheck refuses a cross-origin browser request by the rules
// of http.CrossOriginProtection: Sec-Fetch-Site must say same-origin or
// none (a browser's own navigation) or, from a browser that sends no
// Sec-Fetch-Site, Origin must name the Host the request was sent to. A
// request with neither header (curl, scripts, lb -healthcheck) passes.
// Every request that reaches it is judged as a POST: the profiler answers
// GET, but a profile or trace keeps the process busy for seconds, which a
// page on another site must not be able to start through an operator's
// browser.
func (s *Server) crossOriginCheck(r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		// CrossOriginProtection lets these through unchecked.
		r = r.WithContext(r.Context()) // a shallow copy, to change its method
		r.Method = http.MethodPost
	}
	return s.crossOrigin.Check(r)
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, why, msg string) {
	s.log.Warn("admin request refused", "reason", why, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	http.Error(w, msg, code)
}
