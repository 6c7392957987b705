package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParse feeds arbitrary bytes to Parse, as a config file beside real
// certificates. Whatever it is given, Parse must return a config that
// holds every promise the loader makes, or errors that each name the file
// and say what is wrong; never a panic. An accepted config written back
// out as TOML must load again to the same config.
func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	writeCerts(f, dir)
	file := filepath.Join(dir, "lb.toml")
	if err := os.WriteFile(filepath.Join(dir, "certs", "tickets.key"),
		[]byte("# shared\n"+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600); err != nil {
		f.Fatal(err)
	}

	examples, _ := filepath.Glob("../../examples/*.toml")
	if len(examples) == 0 {
		f.Fatal("no examples found")
	}
	for _, e := range examples {
		src, err := os.ReadFile(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	f.Add([]byte(minimal))
	for _, tc := range badConfigs {
		f.Add([]byte(tc.edit(minimal)))
	}
	for _, s := range []string{
		"[global]\nadmin = \"\"\naccess_log = \"\"\nwatch = false\n" + strings.Replace(minimal, `name = "web"`,
			"name = \"web\"\nretries = 0\nmax_conns_per_backend = 0\n  [pool.health]\n  passive_failures = 0", 1),
		strings.Replace(minimal, "  [listener.tls]\n  cert = \"certs/site.pem\"\n  key = \"certs/site.key\"\n",
			"redirect_https = \"https://:8443\"\n", 1),
		strings.Replace(minimal, `pool = "web"`, "pool = \"web\"\nmode = \"tcp\"\nproxy_protocol = \"v2\"\n"+
			"  [[listener.route]]\n  sni = \"*.example.com\"\n  pool = \"web\"", 1),
		strings.Replace(minimal, `key = "certs/site.key"`, "key = \"certs/site.key\"\n  ticket_keys = \"certs/tickets.key\"", 1),
		"\ufeff" + minimal,
		"",
		"[[listener]]\n[[pool]]\n",
		"listener = [{name = \"a\", bind = \":0\", pool = \"p\"}]\npool = [{name = \"p\", backend = [{address = \"h:1\"}]}]\n",
		"[pool]\nname = 1\n",
		"x = \"\"\"\nmulti\nline = 1\n\"\"\"\n",
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse(src, file)
		if err != nil {
			if cfg != nil {
				t.Fatalf("both a config and an error: %v", err)
			}
			checkErrors(t, err, file)
			return
		}
		checkConfig(t, cfg, file)

		// Written back out, the config loads to the same.
		var out bytes.Buffer
		if err := toml.NewEncoder(&out).Encode(cfg); err != nil {
			t.Fatalf("cannot encode an accepted config: %v", err)
		}
		again, err := Parse(out.Bytes(), file)
		if err != nil {
			t.Fatalf("accepted config, written out, is refused: %v\n%s", err, out.Bytes())
		}
		cfg.Warnings, again.Warnings = nil, nil
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("config changed by writing it out and loading it:\n%+v\n%+v\n%s", cfg, again, out.Bytes())
		}
	})
}

// checkErrors checks what Parse promises of its errors: an Errors of
// messages that each name the file, in file order.
func checkErrors(t *testing.T, err error, file string) {
	t.Helper()
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("error %v (%T) is not a non-empty Errors", err, err)
	}
	for i, e := range errs {
		if e.Msg == "" || e.File != file || e.Line < 0 {
			t.Fatalf("error %d is %+v: want a message, file %s and a line", i, e, file)
		}
		if i > 0 && e.Line < errs[i-1].Line {
			t.Fatalf("errors out of file order:\n%v", err)
		}
		if !strings.HasPrefix(e.Error(), file+":") {
			t.Fatalf("error %q does not start with the file", e.Error())
		}
	}
}

// checkConfig checks an accepted config against what validation and
// applyDefaults guarantee.
func checkConfig(t *testing.T, c *Config, file string) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format+"\nconfig: %+v", append(args, c)...)
	}
	if c.File != file {
		fail("File %q, want %q", c.File, file)
	}
	g := c.Global
	if !oneOf(g.LogLevel, "trace", "debug", "info", "warn", "error") || !oneOf(g.LogFormat, "text", "json") {
		fail("global log_level %q, log_format %q", g.LogLevel, g.LogFormat)
	}
	if g.ShutdownGrace.Duration < 0 || g.ShutdownGrace.err != nil {
		fail("shutdown_grace %v", g.ShutdownGrace)
	}
	if g.Admin != "" && checkHostPort(g.Admin, true) != nil {
		fail("admin %q", g.Admin)
	}
	if len(c.Listeners) == 0 || len(c.Pools) == 0 {
		fail("%d listeners, %d pools", len(c.Listeners), len(c.Pools))
	}

	pools := map[string]bool{}
	for i, p := range c.Pools {
		if p.Name == "" || pools[p.Name] {
			fail("pool[%d] name %q empty or not unique", i, p.Name)
		}
		pools[p.Name] = true
		if !oneOf(p.Algorithm, "round_robin", "least_conn") || !oneOf(p.OnClientAbort, "cancel", "finish") || p.Retries < 0 || p.Retries > MaxRetries ||
			p.MaxConnsPerBackend < 0 {
			fail("pool[%d] algorithm %q, retries %d, max_conns_per_backend %d", i, p.Algorithm, p.Retries, p.MaxConnsPerBackend)
		}
		if c := p.Cache; c != nil && (c.MaxSize.Bytes <= 0 || c.MaxObject.Bytes <= 0 || c.MaxObject.Bytes > c.MaxSize.Bytes) {
			fail("pool[%d] cache max_size %d, max_object %d", i, c.MaxSize.Bytes, c.MaxObject.Bytes)
		}
		h := p.Health
		if p.ConnectTimeout.Duration <= 0 || p.ResponseTimeout.Duration <= 0 || h.Interval.Duration <= 0 ||
			h.Timeout.Duration <= 0 || h.SlowStart.Duration < 0 {
			fail("pool[%d] has a duration that is not positive", i)
		}
		if !oneOf(h.Check, "http", "tcp", "none") || !strings.HasPrefix(h.Path, "/") || h.Rise < 1 || h.Fall < 1 ||
			h.PassiveFailures < 0 || strings.ContainsAny(h.Path+h.Host, " \r\n") {
			fail("pool[%d] health %+v", i, h)
		}
		if len(h.Expect) == 0 {
			fail("pool[%d] expect_status %q parsed to nothing", i, h.ExpectStatus)
		}
		for _, r := range h.Expect {
			if r.Lo < 100 || r.Hi > 599 || r.Lo > r.Hi {
				fail("pool[%d] expect_status range %v", i, r)
			}
		}
		if len(p.Backends) == 0 {
			fail("pool[%d] has no backends", i)
		}
		addrs := map[string]bool{}
		for j, b := range p.Backends {
			if checkHostPort(b.Address, false) != nil || addrs[b.Address] || b.Weight < 0 || b.Weight > MaxWeight {
				fail("pool[%d].backend[%d] %+v", i, j, b)
			}
			addrs[b.Address] = true
		}
	}

	names, binds := map[string]bool{}, map[string]bool{}
	for i, l := range c.Listeners {
		if l.Name == "" || names[l.Name] {
			fail("listener[%d] name %q empty or not unique", i, l.Name)
		}
		names[l.Name] = true
		if l.Bind == "" || checkHostPort(l.Bind, true) != nil || binds[l.Bind] {
			fail("listener[%d] bind %q", i, l.Bind)
		}
		if !strings.HasSuffix(l.Bind, ":0") {
			binds[l.Bind] = true
		}
		tcp := l.Mode == "tcp"
		if !oneOf(l.Mode, "http", "tcp") || !oneOf(l.ProxyProtocol, "", "v1", "v2") || l.ProxyProtocol != "" && !tcp {
			fail("listener[%d] mode %q, proxy_protocol %q", i, l.Mode, l.ProxyProtocol)
		}
		if l.Pool != "" && !pools[l.Pool] {
			fail("listener[%d] pool %q does not exist", i, l.Pool)
		}
		if l.Pool == "" && l.RedirectHTTPS == "" && !(tcp && len(l.Routes) > 0) {
			fail("listener[%d] has no pool", i)
		}
		if l.RedirectHTTPS != "" {
			if _, err := ParseRedirect(l.RedirectHTTPS); err != nil || tcp || l.TLS != nil {
				fail("listener[%d] redirect_https %q", i, l.RedirectHTTPS)
			}
		}
		if l.ReadTimeout.Duration <= 0 || l.WriteTimeout.Duration <= 0 || l.IdleTimeout.Duration <= 0 {
			fail("listener[%d] has a timeout that is not positive", i)
		}
		if l.MaxRequestBody.Bytes <= 0 || l.MaxHeaderBytes.Bytes < 1024 || l.MaxHeaderBytes.Bytes > 1<<20 ||
			l.MaxRequestBody.err != nil || l.MaxHeaderBytes.err != nil || l.MaxConnections < 1 ||
			l.MaxConnectionsPerClient < 0 || l.MaxConnectionsPerClient > 0 && l.AcceptProxyProtocol {
			fail("listener[%d] sizes %v, %v, max_connections %d", i, l.MaxRequestBody, l.MaxHeaderBytes, l.MaxConnections)
		}
		if t := l.TLS; t != nil {
			// Only ACME makes a static certificate optional.
			static := t.ACME == nil || t.Cert != "" || t.Key != ""
			if static && (t.Cert == "" || t.Key == "") || !oneOf(t.MinVersion, "1.2", "1.3") ||
				!oneOf(t.ClientAuth, "none", "request", "require") || t.ClientAuth != "none" && t.ClientCA == "" ||
				strings.ContainsAny(t.HSTS, "\r\n") {
				fail("listener[%d] tls %+v", i, t)
			}
			if static && (!filepath.IsAbs(t.Cert) || !filepath.IsAbs(t.Key)) {
				fail("listener[%d] certificate paths %q, %q not resolved against the config's folder", i, t.Cert, t.Key)
			}
			if a := t.ACME; a != nil {
				if len(a.Domains) == 0 || !filepath.IsAbs(a.Storage) || len(a.Challenges) == 0 ||
					!oneOf(a.KeyType, "ecdsa-p256", "rsa-2048") || !strings.HasPrefix(a.Directory, "https://") {
					fail("listener[%d] acme %+v", i, a)
				}
			}
			if t.TicketKeys != "" {
				if !filepath.IsAbs(t.TicketKeys) {
					fail("listener[%d] ticket_keys %q not resolved against the config's folder", i, t.TicketKeys)
				}
				if _, err := ReadTicketKeys(t.TicketKeys); err != nil {
					fail("listener[%d] ticket_keys accepted but unreadable: %v", i, err)
				}
			}
			for _, a := range t.ALPN {
				if tcp && (a == "" || len(a) > 255) || !tcp && !oneOf(a, "h2", "http/1.1") {
					fail("listener[%d] alpn %q", i, a)
				}
			}
		}
		for j, r := range l.Routes {
			if !pools[r.Pool] {
				fail("listener[%d].route[%d] pool %q does not exist", i, j, r.Pool)
			}
			switch {
			case tcp && (r.SNI == "" || r.Host != "" || r.PathPrefix != "" || checkHostPattern(r.SNI) != nil):
				fail("listener[%d].route[%d] tcp route %+v", i, j, r)
			case !tcp && (r.SNI != "" || r.Host == "" && r.PathPrefix == "" ||
				r.Host != "" && checkHostPattern(r.Host) != nil || r.PathPrefix != "" && r.PathPrefix[0] != '/'):
				fail("listener[%d].route[%d] http route %+v", i, j, r)
			}
		}
	}
}

func oneOf(s string, set ...string) bool { return slices.Contains(set, s) }
