package config

import (
	"bytes"
	"math"

	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"mime"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/offloadlb/lb/internal/edge"
)

// validate checks every field and records every problem; it never stops at
// the first.
func (l *loader) validate() {
	c := l.cfg
	l.validateGlobal()
	if len(c.Listeners) == 0 {
		l.errorf("listener", "at least one [[listener]] is required")
	}
	if len(c.Pools) == 0 {
		l.errorf("pool", "at least one [[pool]] is required")
	}

	pools := map[string]int{}
	for i := range c.Pools {
		l.validatePool(i, pools)
	}
	names := map[string]int{}
	binds := map[string]int{}
	for i := range c.Listeners {
		l.validateListener(i, names, binds, pools)
	}
	l.validateACMEAcrossListeners()
}

func (l *loader) validateGlobal() {
	g := &l.cfg.Global
	switch g.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		l.errorf("global.log_level", "%q is not one of trace, debug, info, warn, error", g.LogLevel)
	}
	switch g.LogFormat {
	case "text", "json":
	default:
		l.errorf("global.log_format", "%q is not one of text, json", g.LogFormat)
	}
	switch g.AccessLogFormat {
	case "text", "json", "combined":
	default:
		l.errorf("global.access_log_format", "%q is not one of text, json, combined", g.AccessLogFormat)
	}
	if g.Admin != "" {
		if err := checkHostPort(g.Admin, true); err != nil {
			l.errorf("global.admin", "%v", err)
		}
	}
	l.checkDur(g.ShutdownGrace, "global.shutdown_grace", true)
	if g.MaxBodyMemory.err == nil && g.MaxBodyMemory.Bytes == 0 {
		l.errorf("global.max_body_memory", "0 would leave what clients can make lb hold unbounded; set a size (the default is 256MiB)")
	} else {
		l.checkSize(g.MaxBodyMemory, "global.max_body_memory", 1<<20)
	}
	l.validateAdminAccess()
}

func (l *loader) validateListener(i int, names, binds, pools map[string]int) {
	ln := &l.cfg.Listeners[i]
	p := fmt.Sprintf("listener[%d]", i)

	l.uniqueName(p, "listener", ln.Name, i, names)
	if ln.Bind == "" {
		l.missing(p+".bind", "(an address such as \"0.0.0.0:8443\")")
	} else if err := checkHostPort(ln.Bind, true); err != nil {
		l.errorf(p+".bind", "%v", err)
	} else if j := binds[ln.Bind]; j > 0 {
		l.errorf(p+".bind", "address %s is already bound by listener[%d]", ln.Bind, j-1)
	} else if !strings.HasSuffix(ln.Bind, ":0") { // port 0: any free port
		binds[ln.Bind] = i + 1
	}

	tcp := ln.Mode == "tcp"
	switch ln.Mode {
	case "http", "tcp":
	default:
		l.errorf(p+".mode", "%q is not one of http, tcp", ln.Mode)
	}
	// A listener that only redirects to HTTPS needs no pool, nor does a
	// tcp listener whose routes cover every server name it serves.
	l.checkPoolRef(p+".pool", ln.Pool, pools, ln.RedirectHTTPS == "" && !(tcp && len(ln.Routes) > 0), tcp)
	l.loadErrorPages(p, ln, tcp)
	l.checkAddrList(p+".allow", ln.Allow)
	l.checkAddrList(p+".deny", ln.Deny)
	if ln.Headers != nil && tcp {
		l.errorf(p+".headers", "are for http listeners")
	}
	l.checkHeaders(p+".headers", ln.Headers)
	l.checkLimits(p+".limits", ln.Limits, true)
	l.validateCompress(p, ln, tcp)

	l.checkDur(ln.ReadTimeout, p+".read_timeout", false)
	l.checkDur(ln.WriteTimeout, p+".write_timeout", false)
	l.checkDur(ln.IdleTimeout, p+".idle_timeout", false)
	if ln.MaxRequestBody.Bytes != 0 || ln.MaxRequestBody.err != nil { // 0: no limit
		l.checkSize(ln.MaxRequestBody, p+".max_request_body", 0)
	}
	l.checkSize(ln.BodyBuffer, p+".body_buffer", 1024)
	if ln.BodyBuffer.err == nil && ln.BodyBuffer.Bytes > MaxBodyBuffer {
		l.errorf(p+".body_buffer", "%d is more than the 16MiB limit", ln.BodyBuffer.Bytes)
	}
	l.checkSize(ln.MaxHeaderBytes, p+".max_header_bytes", 1024)
	if ln.MaxHeaderBytes.err == nil && ln.MaxHeaderBytes.Bytes > 1<<20 {
		l.errorf(p+".max_header_bytes", "%d is more than the 1MiB limit", ln.MaxHeaderBytes.Bytes)
	}
	if ln.MaxConnections < 1 {
		l.errorf(p+".max_connections", "must be at least 1 (got %d)", ln.MaxConnections)
	}
	switch {
	case ln.MaxConnectionsPerClient < 0:
		l.errorf(p+".max_connections_per_client", "must be 0 (no limit) or more (got %d)", ln.MaxConnectionsPerClient)
	case ln.MaxConnectionsPerClient > 0 && ln.AcceptProxyProtocol:
		l.errorf(p+".max_connections_per_client", "counts the addresses connections come from; behind accept_proxy_protocol they all come from the balancer in front, so set the limit there")
	}
	switch ln.ProxyProtocol {
	case "":
	case "v1", "v2":
		if !tcp {
			l.errorf(p+".proxy_protocol", "sending the PROXY protocol applies to tcp listeners; HTTP backends get X-Forwarded-For")
		}
	default:
		l.errorf(p+".proxy_protocol", "%q is not one of \"\", \"v1\", \"v2\"", ln.ProxyProtocol)
	}
	if ln.RedirectHTTPS != "" {
		if tcp {
			l.errorf(p+".redirect_https", "redirects are HTTP: a tcp listener cannot send one")
		} else if ln.TLS != nil {
			l.errorf(p+".redirect_https", "only a plaintext listener (without [listener.tls]) can redirect to HTTPS")
		} else if _, err := ParseRedirect(ln.RedirectHTTPS); err != nil {
			l.errorf(p+".redirect_https", "%v", err)
		}
	}
	if ln.TLS != nil {
		l.validateTLS(p+".tls", ln.TLS, tcp)
	}
	for j := range ln.Routes {
		l.validateRoute(fmt.Sprintf("%s.route[%d]", p, j), &ln.Routes[j], pools, tcp)
	}
}

func (l *loader) validateTLS(p string, t *TLS, tcp bool) {
	if t.ACME != nil {
		l.validateACME(p+".acme", t.ACME)
	}
	if t.CertPEM == nil {
		// With [listener.tls.acme], a static certificate is optional: it
		// serves names whose automatic certificate is not there yet.
		if t.ACME == nil || t.Cert != "" || t.Key != "" {
			l.checkKeyPair(p, t.Cert, t.Key)
		}
	} else if _, err := tls.X509KeyPair(t.CertPEM, t.KeyPEM); err != nil {
		l.errorf(p+".cert", "cannot load the certificate held in memory: %v", err)
	}
	for j, s := range t.SNI {
		l.checkKeyPair(fmt.Sprintf("%s.sni[%d]", p, j), s.Cert, s.Key)
	}
	if t.TicketKeys != "" {
		if _, err := ReadTicketKeys(t.TicketKeys); err != nil {
			l.errorf(p+".ticket_keys", "%v", err)
		} else if fi, err := os.Stat(t.TicketKeys); err == nil && fi.Mode().Perm()&0o077 != 0 {
			l.warnf(p+".ticket_keys", "%s can be read by other users (mode %v): whoever reads it can decrypt resumed sessions; chmod 600 it", t.TicketKeys, fi.Mode().Perm())
		}
	}
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		l.errorf(p+".min_version", "%q is not one of \"1.2\", \"1.3\" (older versions are insecure)", t.MinVersion)
	}
	switch t.ClientAuth {
	case "none":
		if t.ClientCA != "" && l.defined(p+".client_ca") {
			l.warnf(p+".client_ca", "not used: client_auth is \"none\"")
		}
	case "request", "require":
		if t.ClientCA == "" {
			l.missing(p+".client_ca", "(PEM bundle of the CAs that sign client certificates; client_auth = \""+t.ClientAuth+"\" needs it)")
		} else if err := checkCAs(t.ClientCA); err != nil {
			l.errorf(p+".client_ca", "%v", err)
		}
	default:
		l.errorf(p+".client_auth", "%q is not one of none, request, require", t.ClientAuth)
	}
	for j, a := range t.ALPN {
		if tcp {
			// A tcp listener offers whatever its backends speak.
			if a == "" || len(a) > 255 {
				l.errorf(fmt.Sprintf("%s.alpn[%d]", p, j), "%q is not a protocol name", a)
			}
			continue
		}
		switch a {
		case "http/1.1", "h2":
		default:
			l.errorf(fmt.Sprintf("%s.alpn[%d]", p, j), "%q is not one of \"h2\", \"http/1.1\"", a)
		}
	}
	if strings.ContainsAny(t.HSTS, "\r\n") {
		l.errorf(p+".hsts", "must be a single header value")
	}
}

// checkCAs verifies that a CA bundle can be read and holds certificates.
func checkCAs(path string) error {
	b, err := ReadPEM(path)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("%s holds no PEM certificate", path)
	}
	return nil
}

// checkKeyPair verifies that a certificate chain and its key can be read
// and belong together.
func (l *loader) checkKeyPair(p, cert, key string) {
	var certPEM, keyPEM []byte
	var err error
	if cert == "" {
		l.missing(p+".cert", "(path to a PEM certificate chain)")
	} else if certPEM, err = ReadPEM(cert); err != nil {
		l.errorf(p+".cert", "%v", err)
	}
	if key == "" {
		l.missing(p+".key", "(path to the PEM private key)")
	} else if keyPEM, err = ReadPEM(key); err != nil {
		l.errorf(p+".key", "%v", err)
	}
	if certPEM == nil || keyPEM == nil {
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		l.errorf(p+".cert", "cannot load %s with %s: %v", cert, key, err)
	}
}

func (l *loader) validateRoute(p string, r *Route, pools map[string]int, tcp bool) {
	if r.Redirect == "" || r.Pool != "" {
		l.checkPoolRef(p+".pool", r.Pool, pools, true, tcp)
	}
	l.checkAddrList(p+".allow", r.Allow)
	l.checkAddrList(p+".deny", r.Deny)
	if tcp {
		switch {
		case r.StripPrefix:
			l.errorf(p+".strip_prefix", "is for http listeners: a tcp listener has no paths")
		case r.Redirect != "":
			l.errorf(p+".redirect", "is for http listeners")
		case r.Headers != nil:
			l.errorf(p+".headers", "are for http listeners")
		case len(r.Allow)+len(r.Deny) > 0:
			l.errorf(p, "allow and deny on a tcp listener's routes: put them on the listener, where they are checked before any byte")
		case r.Limits != nil:
			l.errorf(p+".limits", "are for http routes: a tcp listener's limits are the listener's")
		case r.BasicAuth != "":
			l.errorf(p+".basic_auth", "is for http listeners")
		}
	} else {
		if r.StripPrefix && r.PathPrefix == "" {
			l.errorf(p+".strip_prefix", "needs path_prefix: it is what is stripped")
		}
		if r.Redirect != "" {
			if r.Pool != "" {
				l.errorf(p+".redirect", "a route either redirects or sends to a pool, not both (pool = %q)", r.Pool)
			}
			if err := checkOrigin(r.Redirect); err != nil {
				l.errorf(p+".redirect", "%v", err)
			}
		}
		l.checkHeaders(p+".headers", r.Headers)
		l.checkLimits(p+".limits", r.Limits.Limits(), false)
		if r.BasicAuth != "" {
			users, err := ReadHtpasswd(r.BasicAuth)
			if err != nil {
				l.errorf(p+".basic_auth", "%v", err)
			}
			r.Users = users
			if strings.ContainsAny(r.BasicAuthRealm, "\"\\\r\n") {
				l.errorf(p+".basic_auth_realm", "%q holds a quote, a backslash or a line break", r.BasicAuthRealm)
			}
		}
	}
	if tcp {
		switch {
		case r.Host != "" || r.PathPrefix != "":
			l.errorf(p, "a tcp listener routes by sni (the TLS server name); host and path_prefix are for http listeners")
		case r.SNI == "":
			l.missing(p+".sni", "(a server name such as \"db.example.com\" or \"*.example.com\")")
		default:
			if err := checkHostPattern(r.SNI); err != nil {
				l.errorf(p+".sni", "%v", err)
			}
		}
		return
	}
	if r.SNI != "" {
		l.errorf(p+".sni", "sni routes are for tcp listeners; an http listener routes by host")
	}
	if r.Host == "" && r.PathPrefix == "" {
		l.errorf(p, "a route needs host or path_prefix (requests matching neither go to the listener's pool)")
	}
	if r.Host != "" {
		if err := checkHostPattern(r.Host); err != nil {
			l.errorf(p+".host", "%v", err)
		}
	}
	if r.PathPrefix != "" && r.PathPrefix[0] != '/' {
		l.errorf(p+".path_prefix", "%q must start with \"/\"", r.PathPrefix)
	}
}

// checkPoolRef checks a listener's or route's pool name; tcp is whether
// the listener is a tcp one, whose connections carry no HTTP to take a
// cookie or a header from.
func (l *loader) checkPoolRef(path, name string, pools map[string]int, required, tcp bool) {
	if name == "" {
		if required {
			l.missing(path, "(the name of a [[pool]])")
		}
		return
	}
	i := pools[name]
	if i == 0 {
		l.errorf(path, "no pool named %q%s", name, poolHint(l.cfg, name))
		return
	}
	pl := &l.cfg.Pools[i-1]
	if !tcp {
		return
	}
	if pl.Sticky != nil {
		l.errorf(path, "pool %q has [pool.sticky], which needs HTTP; a tcp listener can keep clients on a backend with algorithm = \"hash\" and hash_key = \"client_ip\"", name)
	}
	if pl.HashKey != "" && pl.HashKey != "client_ip" {
		l.errorf(path, "pool %q hashes by %s, which needs HTTP; a tcp listener's pool can hash only by client_ip", name, pl.HashKey)
	}
}

func poolHint(c *Config, name string) string {
	var known []string
	for _, p := range c.Pools {
		if p.Name != "" {
			known = append(known, strconv.Quote(p.Name))
		}
	}
	if len(known) == 0 {
		return ""
	}
	return " (pools: " + strings.Join(known, ", ") + ")"
}

// uniqueName checks the name of kind's i-th entry (p is its path): that
// it has one, and that no earlier entry in seen (names to index+1) has
// it, recording it there if not.
func (l *loader) uniqueName(p, kind, name string, i int, seen map[string]int) {
	switch {
	case name == "":
		l.missing(p+".name", "(every "+kind+" needs a unique name)")
	case seen[name] > 0:
		l.errorf(p+".name", "duplicate name %q (also %s[%d])", name, kind, seen[name]-1)
	default:
		seen[name] = i + 1
	}
}

func (l *loader) validatePool(i int, pools map[string]int) {
	pl := &l.cfg.Pools[i]
	p := fmt.Sprintf("pool[%d]", i)
	l.uniqueName(p, "pool", pl.Name, i, pools)
	switch pl.Algorithm {
	case "round_robin", "least_conn", "random_two", "least_time", "hash":
	default:
		l.errorf(p+".algorithm", "%q is not one of round_robin, least_conn, random_two, least_time, hash", pl.Algorithm)
	}
	switch {
	case pl.Algorithm == "hash" && pl.HashKey == "":
		l.missing(p+".hash_key", "(algorithm hash needs one of client_ip, uri, header:NAME, cookie:NAME)")
	case pl.HashKey != "" && pl.Algorithm != "hash":
		l.errorf(p+".hash_key", "is set but algorithm is %q: hash_key is what algorithm \"hash\" hashes", pl.Algorithm)
	case pl.HashKey != "":
		k, err := ParseHashKey(pl.HashKey)
		if err != nil {
			l.errorf(p+".hash_key", "%v", err)
		}
		pl.Key = k
	}
	switch {
	case pl.HashBalance != 0 && pl.Algorithm != "hash":
		l.errorf(p+".hash_balance", "is set but algorithm is %q: it bounds algorithm \"hash\"", pl.Algorithm)
	case pl.HashBalance < 0 || pl.HashBalance > 0 && pl.HashBalance <= 1 || pl.HashBalance > 100:
		l.errorf(p+".hash_balance", "%v is out of range: 0 (no bound), or more than 1 (a backend may take that times the mean load; 1.25 is usual) up to 100", pl.HashBalance)
	}
	if st := pl.Sticky; st != nil {
		l.validateSticky(p+".sticky", st)
	}
	switch pl.OnClientAbort {
	case "cancel", "finish":
	default:
		l.errorf(p+".on_client_abort", "%q is not one of cancel, finish", pl.OnClientAbort)
	}
	if pl.Retries < 0 || pl.Retries > MaxRetries {
		l.errorf(p+".retries", "%d is out of range 0-%d", pl.Retries, MaxRetries)
	}
	l.checkDur(pl.ConnectTimeout, p+".connect_timeout", false)
	l.checkDur(pl.ResponseTimeout, p+".response_timeout", false)
	if pl.MaxConnsPerBackend < 0 {
		l.errorf(p+".max_conns_per_backend", "must be 0 (unlimited) or more (got %d)", pl.MaxConnsPerBackend)
	}
	l.validateHealth(p+".health", &pl.Health)
	if c := pl.Cache; c != nil {
		switch {
		case c.MaxSize.Bytes <= 0:
			l.errorf(p+".cache.max_size", "must be more than 0 (got %d)", c.MaxSize.Bytes)
		case c.MaxObject.Bytes <= 0:
			l.errorf(p+".cache.max_object", "must be more than 0 (got %d)", c.MaxObject.Bytes)
		case c.MaxObject.Bytes > c.MaxSize.Bytes:
			l.errorf(p+".cache.max_object", "is larger than max_size (%d > %d bytes)", c.MaxObject.Bytes, c.MaxSize.Bytes)
		}
	}
	if len(pl.Backends) == 0 {
		l.errorf(p, "pool %q has no [[pool.backend]]", pl.Name)
	} else if backups := countBackups(pl.Backends); backups == len(pl.Backends) {
		l.errorf(p, "every backend of pool %q is a backup: backups serve only while some other backend is down", pl.Name)
	}
	addrs := map[string]int{}
	for j := range pl.Backends {
		b := &pl.Backends[j]
		bp := fmt.Sprintf("%s.backend[%d]", p, j)
		switch {
		case b.Address == "":
			l.missing(bp+".address", "(host:port of the backend)")
		default:
			if err := checkHostPort(b.Address, false); err != nil {
				l.errorf(bp+".address", "%v", err)
			} else if k := addrs[b.Address]; k > 0 {
				l.errorf(bp+".address", "duplicate backend %s (also %s.backend[%d])", b.Address, p, k-1)
			} else {
				addrs[b.Address] = j + 1
			}
		}
		if b.Weight < 0 || b.Weight > MaxWeight {
			l.errorf(bp+".weight", "%d is out of range 0-%d", b.Weight, MaxWeight)
		}
	}
}

// MaxRate bounds limits.rate.
const MaxRate = 1e6

// checkLimits checks a listener's rate limits, or a route's, which have
// no handshakes to limit.
func (l *loader) checkLimits(p string, lim *Limits, listener bool) {
	if lim == nil {
		return
	}

	if lim.Rate <= 0 || lim.Rate > MaxRate || math.IsNaN(lim.Rate) {
		l.errorf(p+".rate", "%v is out of range: more than 0 requests a second (0.5 is one every 2 s), up to %g", lim.Rate, MaxRate)
	}
	if lim.Burst < 1 || lim.Burst > MaxRate {
		l.errorf(p+".burst", "%d is out of range 1-%g", lim.Burst, MaxRate)
	}
	if !listener {
		return
	}
	if lim.HandshakeRate <= 0 || lim.HandshakeRate > MaxRate || math.IsNaN(lim.HandshakeRate) {
		l.errorf(p+".handshake_rate", "%v is out of range: more than 0 a second, up to %g", lim.HandshakeRate, MaxRate)
	}
	if lim.HandshakeBurst < 1 || lim.HandshakeBurst > MaxRate {
		l.errorf(p+".handshake_burst", "%d is out of range 1-%g", lim.HandshakeBurst, MaxRate)
	}
}

// checkAddrList checks an allow or deny list.
func (l *loader) checkAddrList(p string, list []string) {
	for i, s := range list {
		if _, err := edge.ParsePrefix(s); err != nil {
			l.errorf(fmt.Sprintf("%s[%d]", p, i), "%v", err)
		}
	}
}

// checkHeaders checks header rules.
func (l *loader) checkHeaders(p string, h *Headers) {
	if h == nil {
		return
	}
	for _, set := range []struct {
		key     string
		names   []string
		values  map[string]string
		request bool
	}{
		{"request_set", slices.Sorted(maps.Keys(h.RequestSet)), h.RequestSet, true},
		{"request_remove", h.RequestRemove, nil, true},
		{"response_set", slices.Sorted(maps.Keys(h.ResponseSet)), h.ResponseSet, false},
		{"response_remove", h.ResponseRemove, nil, false},
	} {
		for _, n := range set.names {
			if err := edge.CheckRuleField(n, set.request); err != nil {
				l.errorf(p+"."+set.key, "%v", err)
				continue
			}
			if set.values != nil {
				if err := edge.CheckRuleValue(set.values[n]); err != nil {
					l.errorf(p+"."+set.key, "%s: %v", n, err)
				}
			}
		}
	}
}

// checkOrigin checks a redirect's origin: http or https, a host, and no
// path, query or fragment (the request's path and query follow it).
func checkOrigin(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a URL", s)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: want http:// or https:// and a host, such as \"https://www.example.com\"", s)
	case u.Host == "" || u.User != nil:
		return fmt.Errorf("%q has no host", s)
	case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q: only an origin (scheme and host); the request's path and query are added to it", s)
	}
	return nil
}

// loadErrorPages reads a listener's error_pages into its Pages.
func (l *loader) loadErrorPages(p string, ln *Listener, tcp bool) {
	if len(ln.ErrorPages) == 0 {
		return
	}
	if tcp {
		l.errorf(p+".error_pages", "are for http listeners: a tcp listener answers nothing itself")
		return
	}
	ln.Pages = make(map[int]ErrorPage, len(ln.ErrorPages))
	for _, code := range slices.Sorted(maps.Keys(ln.ErrorPages)) {
		kp := p + ".error_pages." + code
		n, err := strconv.Atoi(code)
		if err != nil || n < 400 || n > 599 || strconv.Itoa(n) != code {
			l.errorf(kp, "%q is not a status: error pages are for the 4xx and 5xx answers lb makes itself", code)
			continue
		}
		file := l.resolvePath(ln.ErrorPages[code])
		if ln.ErrorPages[code] == "" {
			l.missing(kp, "(the file to send)")
			continue
		}
		b, err := readSmallFile(file, MaxPageFile, "an error page")
		if err != nil {
			l.errorf(kp, "%v", err)
			continue
		}
		ct := mime.TypeByExtension(filepath.Ext(file))
		if ct == "" {
			ct = "text/plain; charset=utf-8"
		}
		ln.Pages[n] = ErrorPage{File: file, ContentType: ct, Body: b}
	}
}

// validateCompress checks a listener's [listener.compress].
func (l *loader) validateCompress(p string, ln *Listener, tcp bool) {
	cp := ln.Compress
	if cp == nil {
		return
	}
	p += ".compress"
	if tcp {
		l.errorf(p, "is for http listeners: a tcp listener does not read the bytes it passes on")
		return
	}
	if len(cp.Algorithms) == 0 {
		l.errorf(p+".algorithms", "is empty: name at least one of zstd, br, gzip (or remove [listener.compress])")
	}
	seen := map[string]bool{}
	for _, a := range cp.Algorithms {
		switch {
		case !slices.Contains(CompressAlgorithms, a):
			l.errorf(p+".algorithms", "%q is not one of zstd, br, gzip", a)
		case seen[a]:
			l.errorf(p+".algorithms", "%q is listed twice", a)
		}
		seen[a] = true
	}
	if len(cp.Types) == 0 {
		l.errorf(p+".types", "is empty: name the media types to compress, such as \"text/*\" or \"application/json\"")
	}
	for i, t := range cp.Types {
		t = strings.ToLower(strings.TrimSpace(t))
		cp.Types[i] = t
		typ, sub, ok := strings.Cut(t, "/")
		switch {
		case !ok || !edge.IsToken(typ) || !(sub == "*" || edge.IsToken(sub)):
			l.errorf(p+".types", "%q is not a media type (\"type/subtype\", or \"type/*\" for all of a type; no parameters)", cp.Types[i])
		case typ == "*":
			l.errorf(p+".types", "%q would compress every type, images and archives too, which are compressed already: name the types", t)
		}
	}
	if cp.MinSize.err != nil {
		l.errorf(p+".min_size", "%v", cp.MinSize.err)
	} else if cp.MinSize.Bytes < 0 {
		l.errorf(p+".min_size", "must be 0 (every size) or more (got %d)", cp.MinSize.Bytes)
	}
}

func countBackups(bs []Backend) int {
	n := 0
	for _, b := range bs {
		if b.Backup {
			n++
		}
	}
	return n
}

// MinStickySecret is the shortest secret a sticky secret_file may hold.
const MinStickySecret = 16

func (l *loader) validateSticky(p string, st *Sticky) {
	if !edge.IsToken(st.Cookie) {
		l.errorf(p+".cookie", "%q is not a cookie name (letters, digits and !#$%%&'*+-.^_`|~)", st.Cookie)
	}
	l.checkDur(st.MaxAge, p+".max_age", true)
	switch st.SameSite {
	case "lax", "strict":
	case "none":
		if st.Secure == nil || !*st.Secure {
			l.errorf(p+".same_site", "\"none\" needs secure = true: browsers drop SameSite=None cookies that are not Secure")
		}
	default:
		l.errorf(p+".same_site", "%q is not one of lax, strict, none", st.SameSite)
	}
	if strings.ContainsAny(st.Domain, " ;,\r\n\t") {
		l.errorf(p+".domain", "%q is not a domain", st.Domain)
	}
	if st.Path == "" || st.Path[0] != '/' || strings.ContainsAny(st.Path, " ;,\r\n\t") {
		l.errorf(p+".path", "%q must be a path starting with \"/\"", st.Path)
	}
	if st.SecretFile != "" {
		b, err := ReadPEM(st.SecretFile)
		switch {
		case err != nil:
			l.errorf(p+".secret_file", "%v", err)
		case len(bytes.TrimSpace(b)) < MinStickySecret:
			l.errorf(p+".secret_file", "%s holds %d bytes; a secret needs at least %d (`openssl rand -base64 32 > %s`)", st.SecretFile, len(bytes.TrimSpace(b)), MinStickySecret, st.SecretFile)
		default:
			st.Secret = bytes.TrimSpace(b)
			if fi, err := os.Stat(st.SecretFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
				l.warnf(p+".secret_file", "%s can be read by other users (mode %v): whoever reads it can make cookies that pick a backend; chmod 600 it", st.SecretFile, fi.Mode().Perm())
			}
		}
	}
}

// HashKey is a pool's hash_key, parsed: Kind is client_ip, uri, header or
// cookie, and Name the header's or cookie's name.
type HashKey struct {
	Kind, Name string
}

// ParseHashKey parses a hash_key value: client_ip, uri, header:NAME or
// cookie:NAME.
func ParseHashKey(s string) (HashKey, error) {
	if s == "client_ip" || s == "uri" {
		return HashKey{Kind: s}, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	if !ok || kind != "header" && kind != "cookie" {
		return HashKey{}, fmt.Errorf("%q is not one of client_ip, uri, header:NAME, cookie:NAME", s)
	}
	if !edge.IsToken(name) {
		return HashKey{}, fmt.Errorf("%q: %q is not a %s name", s, name, kind)
	}
	return HashKey{Kind: kind, Name: name}, nil
}

func (l *loader) validateHealth(p string, h *Health) {
	switch h.Check {
	case "http", "tcp", "none":
	default:
		l.errorf(p+".check", "%q is not one of http, tcp, none", h.Check)
	}
	if h.Path == "" || h.Path[0] != '/' || strings.ContainsAny(h.Path, " \r\n") {
		l.errorf(p+".path", "%q must be a path starting with \"/\"", h.Path)
	}
	if strings.ContainsAny(h.Host, " \r\n/") {
		l.errorf(p+".host", "%q is not a host name", h.Host)
	}
	l.checkDur(h.Interval, p+".interval", false)
	l.checkDur(h.Timeout, p+".timeout", false)
	if h.Rise < 1 {
		l.errorf(p+".rise", "must be at least 1 (got %d)", h.Rise)
	}
	if h.Fall < 1 {
		l.errorf(p+".fall", "must be at least 1 (got %d)", h.Fall)
	}
	set, err := ParseStatusSet(h.ExpectStatus)
	if err != nil {
		l.errorf(p+".expect_status", "%v", err)
	}
	h.Expect = set
	if h.PassiveFailures < 0 {
		l.errorf(p+".passive_failures", "must be 0 (off) or more (got %d)", h.PassiveFailures)
	}
	l.checkDur(h.SlowStart, p+".slow_start", true)
}

// checkDur reports a duration that did not parse, is negative, or is zero
// where zero means nothing.
func (l *loader) checkDur(d Duration, path string, zeroOK bool) {
	switch {
	case d.err != nil:
		l.errorf(path, "%v", d.err)
	case d.Duration < 0:
		l.errorf(path, "must not be negative (got %s)", d.Duration)
	case d.Duration == 0 && !zeroOK:
		l.errorf(path, "must be greater than 0")
	}
}

func (l *loader) checkSize(s Size, path string, minimum int64) {
	switch {
	case s.err != nil:
		l.errorf(path, "%v", s.err)
	case s.Bytes <= 0:
		l.errorf(path, "must be greater than 0")
	case s.Bytes < minimum:
		l.errorf(path, "must be at least %d bytes (got %d)", minimum, s.Bytes)
	}
}

// checkHostPort validates "host:port". A listening address may leave the
// host empty (":8443", all interfaces); a backend address may not.
func checkHostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return fmt.Errorf("%q is not host:port (%s)", addr, ae.Err)
		}
		return fmt.Errorf("%q is not host:port", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (!listen && n == 0) {
		return fmt.Errorf("%q has a bad port %q (1-65535)", addr, port)
	}
	if host == "" && !listen {
		return fmt.Errorf("%q has no host", addr)
	}
	if host != "" && net.ParseIP(host) == nil && !validHostname(host) {
		return fmt.Errorf("%q has a bad host %q", addr, host)
	}
	return nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func checkHostPattern(h string) error {
	name := strings.TrimPrefix(h, "*.")
	if strings.Contains(name, "*") || !validHostname(name) {
		return fmt.Errorf("%q is not a host name or a \"*.example.com\" wildcard", h)
	}
	return nil
}

// validateACME checks a [listener.tls.acme] table. It reads local files
// (directory_ca) but never contacts the CA: lb -check works offline.
func (l *loader) validateACME(p string, a *ACME) {
	if len(a.Domains) == 0 {
		l.missing(p+".domains", "(the names to get certificates for, such as [\"example.com\"])")
	}
	seen := map[string]int{}
	for j, d := range a.Domains {
		dp := fmt.Sprintf("%s.domains[%d]", p, j)
		switch {
		case strings.HasPrefix(d, "*."):
			l.errorf(dp, "%q: a wildcard certificate needs the dns-01 challenge, which lb does not answer; list each name", d)
		case net.ParseIP(d) != nil:
			l.errorf(dp, "%q: lb gets certificates for DNS names, not IP addresses", d)
		case !validHostname(d) || !strings.Contains(d, "."):
			l.errorf(dp, "%q is not a DNS name such as \"www.example.com\"", d)
		case strings.Contains(d, "_"):
			// A label with "_" names a service record, never a host: CAs
			// refuse it, and the order would fail only at the CA.
			l.errorf(dp, "%q: a certificate's host name may not contain \"_\" (CAs refuse it)", d)
		case seen[d] > 0:
			l.errorf(dp, "duplicate name %q (also domains[%d])", d, seen[d]-1)
		default:
			seen[d] = j + 1
		}
	}
	if a.Email != "" && (!strings.Contains(a.Email, "@") || strings.ContainsAny(a.Email, " \r\n<>")) {
		l.errorf(p+".email", "%q is not an email address", a.Email)
	}
	if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
		l.errorf(p+".directory", "%q is not an https:// URL (RFC 8555 requires HTTPS)", a.Directory)
	}
	if a.DirectoryCA != "" {
		if err := checkCAs(a.DirectoryCA); err != nil {
			l.errorf(p+".directory_ca", "%v", err)
		}
	}
	if err := checkStorage(a.Storage); err != nil {
		l.errorf(p+".storage", "%v", err)
	}
	if len(a.Challenges) == 0 {
		l.errorf(p+".challenges", "must name at least one of \"tls-alpn-01\", \"http-01\"")
	}
	chal := map[string]bool{}
	for j, c := range a.Challenges {
		cp := fmt.Sprintf("%s.challenges[%d]", p, j)
		switch {
		case c != ChallengeTLSALPN && c != ChallengeHTTP:
			l.errorf(cp, "%q is not one of \"tls-alpn-01\", \"http-01\" (lb does not answer dns-01)", c)
		case chal[c]:
			l.errorf(cp, "%q is listed twice", c)
		}
		chal[c] = true
	}
	switch a.KeyType {
	case "ecdsa-p256", "rsa-2048":
	default:
		l.errorf(p+".key_type", "%q is not one of ecdsa-p256, rsa-2048", a.KeyType)
	}
	if a.RenewBefore != "" {
		d, err := time.ParseDuration(strings.TrimSpace(a.RenewBefore))
		switch {
		case err != nil:
			l.errorf(p+".renew_before", "%q is not a duration (write it like \"720h\" for 30 days, or \"\" for a third of the certificate's life)", a.RenewBefore)
		case d <= 0:
			l.errorf(p+".renew_before", "must be greater than 0 (got %s); \"\" renews when a third of the certificate's life is left", d)
		default:
			a.RenewBeforeDur = d
		}
	}
	switch {
	case a.EABKID == "" && a.EABHMAC != "":
		l.missing(p+".eab_kid", "(the key identifier the CA gave with eab_hmac)")
	case a.EABKID != "" && a.EABHMAC == "":
		l.missing(p+".eab_hmac", "(the MAC key the CA gave with eab_kid)")
	case a.EABHMAC != "":
		if _, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(a.EABHMAC, "=")); err != nil {
			l.errorf(p+".eab_hmac", "is not base64url, as CAs give it")
		}
	}
	for _, c := range a.Profile {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			l.errorf(p+".profile", "%q is not a profile name such as \"tlsserver\" or \"shortlived\"", a.Profile)
			break
		}
	}
}

// validateACMEAcrossListeners checks what ties [listener.tls.acme] tables
// together: a name is managed under one set of settings, and http-01 needs
// a plaintext http listener to be answered on.
func (l *loader) validateACMEAcrossListeners() {
	type owner struct {
		i int
		a *ACME
	}
	byName := map[string]owner{}
	plainHTTP := false
	for _, ln := range l.cfg.Listeners {
		if ln.TLS == nil && ln.Mode == "http" {
			plainHTTP = true
		}
	}
	for i, ln := range l.cfg.Listeners {
		if ln.TLS == nil || ln.TLS.ACME == nil {
			continue
		}
		a := ln.TLS.ACME
		p := fmt.Sprintf("listener[%d].tls.acme", i)
		for j, d := range a.Domains {
			if o, ok := byName[d]; ok && o.i != i && !SameACME(o.a, a) {
				l.errorf(fmt.Sprintf("%s.domains[%d]", p, j), "%q is also in listener[%d].tls.acme with other settings; a name has one certificate, so give both tables the same settings", d, o.i)
			} else if !ok {
				byName[d] = owner{i, a}
			}
		}
		if slices.Contains(a.Challenges, ChallengeHTTP) && !plainHTTP && l.defined(p+".challenges") {
			l.warnf(p+".challenges", "http-01 is answered on plaintext http listeners, and this config has none (the CA connects to port 80); only tls-alpn-01 can succeed here unless another lb sharing storage serves port 80")
		}
	}
}

// SameACME reports whether two [listener.tls.acme] tables ask for the
// same certificates in the same way (domains aside).
func SameACME(a, b *ACME) bool {
	return a.Email == b.Email && a.Directory == b.Directory && a.DirectoryCA == b.DirectoryCA &&
		a.Storage == b.Storage && slices.Equal(a.Challenges, b.Challenges) && a.KeyType == b.KeyType &&
		a.RenewBefore == b.RenewBefore && a.EABKID == b.EABKID && a.EABHMAC == b.EABHMAC && a.Profile == b.Profile
}

// checkStorage says why lb could not keep its ACME files in dir: it is
// not a folder, or it cannot be reached or written, or (when it does not
// exist yet) the folder it would be made in cannot be. Nothing is
// created: lb -check leaves the disk as it is.
func checkStorage(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return fmt.Errorf("%s is not a folder", dir)
	case err == nil:
		if err := writable(dir); err != nil {
			return fmt.Errorf("%s cannot be written by lb's user: %v", dir, err)
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s cannot be used: %v", dir, err)
	}
	// Made at start: the nearest folder that exists must let lb make it.
	parent := filepath.Dir(dir)
	for parent != filepath.Dir(parent) {
		if _, err := os.Stat(parent); err == nil {
			break
		}
		parent = filepath.Dir(parent)
	}
	if err := writable(parent); err != nil {
		return fmt.Errorf("%s cannot be made: %s cannot be written by lb's user: %v", dir, parent, err)
	}
	return nil
}
