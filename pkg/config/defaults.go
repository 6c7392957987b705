package config

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// applyDefaults fills every key the operator did not write. Keys whose zero
// value is meaningful (retries = 0, admin = "", weight = 0, ...) are
// defaulted only when absent from the file, not when zero.
func (l *loader) applyDefaults() {
	c := l.cfg
	g := &c.Global
	setStr(&g.LogLevel, "info")
	setStr(&g.LogFormat, "text")
	if g.LogFormat == "json" {
		setStr(&g.AccessLogFormat, "json")
	}
	setStr(&g.AccessLogFormat, "text")
	if !l.defined("global.access_log") {
		g.AccessLog = "stdout"
	}
	if !l.defined("global.admin") {
		g.Admin = DefaultAdmin
	}
	if !l.defined("global.shutdown_grace") {
		g.ShutdownGrace.Duration = DefaultShutdownGrace
	}
	if !l.defined("global.watch") {
		g.Watch = true
	}
	l.setSize(&g.MaxBodyMemory, "global.max_body_memory", DefaultMaxBodyMemory)

	for i := range c.Listeners {
		ln := &c.Listeners[i]
		p := fmt.Sprintf("listener[%d]", i)
		setStr(&ln.Mode, "http")
		l.setDur(&ln.ReadTimeout, p+".read_timeout", DefaultReadTimeout)
		l.setDur(&ln.WriteTimeout, p+".write_timeout", DefaultWriteTimeout)
		l.setDur(&ln.IdleTimeout, p+".idle_timeout", DefaultIdleTimeout)
		l.setSize(&ln.MaxRequestBody, p+".max_request_body", DefaultMaxRequestBody)
		l.setSize(&ln.MaxHeaderBytes, p+".max_header_bytes", DefaultMaxHeaderBytes)
		l.setSize(&ln.BodyBuffer, p+".body_buffer", DefaultBodyBuffer)
		if !l.defined(p + ".max_connections") {
			ln.MaxConnections = DefaultMaxConnections
		}
		if cp := ln.Compress; cp != nil {
			if !l.defined(p + ".compress.algorithms") {
				cp.Algorithms = slices.Clone(CompressAlgorithms)
			}
			if !l.defined(p + ".compress.types") {
				cp.Types = slices.Clone(DefaultCompressTypes)
			}
			l.setSize(&cp.MinSize, p+".compress.min_size", DefaultCompressMinSize)
		}
		if t := ln.TLS; t != nil {
			if t.CertPEM == nil {
				t.Cert, t.Key = l.resolvePath(t.Cert), l.resolvePath(t.Key)
			}
			t.ClientCA = l.resolvePath(t.ClientCA)
			t.TicketKeys = l.resolvePath(t.TicketKeys)
			for j := range t.SNI {
				t.SNI[j].Cert, t.SNI[j].Key = l.resolvePath(t.SNI[j].Cert), l.resolvePath(t.SNI[j].Key)
			}
			if a := t.ACME; a != nil {
				setStr(&a.Directory, DefaultACMEDirectory)
				setStr(&a.Storage, DefaultACMEStorage)
				a.Storage = l.resolvePath(a.Storage)
				a.DirectoryCA = l.resolvePath(a.DirectoryCA)
				setStr(&a.KeyType, DefaultACMEKeyType)
				if !l.defined(p + ".tls.acme.challenges") {
					a.Challenges = []string{ChallengeTLSALPN, ChallengeHTTP}
				}
				for j, d := range a.Domains {
					a.Domains[j] = strings.ToLower(strings.TrimSuffix(d, "."))
				}
			}
			setStr(&t.MinVersion, "1.2")
			setStr(&t.ClientAuth, "none")
			if !l.defined(p+".tls.alpn") && ln.Mode == "http" {
				// A tcp listener offers no protocol unless told: its
				// backends may not speak HTTP at all.
				t.ALPN = []string{"h2", "http/1.1"}
			}
		}
	}

	for i := range c.Listeners {
		ln := &c.Listeners[i]
		setBurst(ln.Limits)
		for j := range ln.Routes {
			r := &ln.Routes[j]
			if r.Limits != nil && r.Limits.Burst == 0 && r.Limits.Rate > 0 {
				r.Limits.Burst = max(1, int(math.Ceil(r.Limits.Rate)))
			}
			r.BasicAuth = l.resolvePath(r.BasicAuth)
			setStr(&r.BasicAuthRealm, "restricted")
		}
	}

	for i := range c.Pools {
		pl := &c.Pools[i]
		p := fmt.Sprintf("pool[%d]", i)
		setStr(&pl.Algorithm, "round_robin")
		setStr(&pl.OnClientAbort, "cancel")
		if !l.defined(p + ".retries") {
			pl.Retries = DefaultRetries
		}
		l.setDur(&pl.ConnectTimeout, p+".connect_timeout", DefaultConnectTimeout)
		l.setDur(&pl.ResponseTimeout, p+".response_timeout", DefaultResponseTimeout)
		if !l.defined(p + ".max_conns_per_backend") {
			pl.MaxConnsPerBackend = DefaultMaxConnsPerBE
		}
		h := &pl.Health
		hp := p + ".health"
		// Without an explicit check, a TCP connect check: it never marks a
		// farm down just because it lacks a health endpoint.
		setStr(&h.Check, "tcp")
		setStr(&h.Path, DefaultHealthPath)
		l.setDur(&h.Interval, hp+".interval", DefaultInterval)
		l.setDur(&h.Timeout, hp+".timeout", DefaultCheckTimeout)
		if !l.defined(hp + ".rise") {
			h.Rise = DefaultRise
		}
		if !l.defined(hp + ".fall") {
			h.Fall = DefaultFall
		}
		setStr(&h.ExpectStatus, DefaultExpectStatus)
		if !l.defined(hp + ".passive_failures") {
			h.PassiveFailures = DefaultPassiveFailures
		}
		if st := pl.Sticky; st != nil {
			setStr(&st.Cookie, DefaultStickyCookie)
			setStr(&st.SameSite, "lax")
			setStr(&st.Path, "/")
			if st.HTTPOnly == nil {
				t := true
				st.HTTPOnly = &t
			}
			st.SecretFile = l.resolvePath(st.SecretFile)
		}
		if pl.Cache != nil {
			l.setSize(&pl.Cache.MaxSize, p+".cache.max_size", DefaultCacheMaxSize)
			l.setSize(&pl.Cache.MaxObject, p+".cache.max_object", DefaultCacheMaxObject)
			if !l.defined(p + ".cache.x_cache") {
				pl.Cache.XCache = true
			}
		}
		for j := range pl.Backends {
			if !l.defined(fmt.Sprintf("%s.backend[%d].weight", p, j)) {
				pl.Backends[j].Weight = DefaultWeight
			}
		}
	}
}

// setBurst gives limits without a burst one of a second's rate, and a
// listener's limits their handshake bucket (by default the same as the
// requests').
func setBurst(l *Limits) {
	if l == nil {
		return
	}
	if l.Burst == 0 && l.Rate > 0 {
		l.Burst = max(1, int(math.Ceil(l.Rate)))
	}
	if l.HandshakeRate == 0 {
		l.HandshakeRate = l.Rate
		if l.HandshakeBurst == 0 {
			l.HandshakeBurst = l.Burst
		}
	}
	if l.HandshakeBurst == 0 && l.HandshakeRate > 0 {
		l.HandshakeBurst = max(1, int(math.Ceil(l.HandshakeRate)))
	}
}

func setStr(s *string, def string) {
	if *s == "" {
		*s = def
	}
}

func (l *loader) setDur(d *Duration, path string, def time.Duration) {
	if !l.defined(path) {
		d.Duration = def
	}
}

func (l *loader) setSize(s *Size, path string, def int64) {
	if !l.defined(path) {
		s.Bytes = def
	}
}
