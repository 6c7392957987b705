package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
)

// writeCerts makes certs/site.pem and certs/site.key under dir.
func writeCerts(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"site", "api"} {
		p, err := certgen.SelfSigned(name + ".example.com")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := p.Write(filepath.Join(dir, "certs"), name); err != nil {
			t.Fatal(err)
		}
	}
}

// parseIn writes src as dir/lb.toml (with certificates beside it) and
// loads it.
func parseIn(t *testing.T, src string) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	writeCerts(t, dir)
	path := filepath.Join(dir, "lb.toml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

const minimal = `
[[listener]]
name = "https"
bind = "127.0.0.1:8443"
pool = "web"
  [listener.tls]
  cert = "certs/site.pem"
  key = "certs/site.key"

[[pool]]
name = "web"
  [[pool.backend]]
  address = "10.0.0.11:8080"
`

func TestDefaults(t *testing.T) {
	cfg, err := parseIn(t, minimal)
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Global
	if g.LogLevel != "info" || g.LogFormat != "text" || g.AccessLog != "stdout" ||
		g.Admin != "127.0.0.1:9100" || g.ShutdownGrace.Duration != 30*time.Second || !g.Watch ||
		g.MaxBodyMemory.Bytes != 256<<20 {
		t.Errorf("global defaults: %+v", g)
	}
	l := cfg.Listeners[0]
	if l.Mode != "http" || l.ReadTimeout.Duration != 30*time.Second || l.WriteTimeout.Duration != 30*time.Second ||
		l.IdleTimeout.Duration != 60*time.Second || l.MaxRequestBody.Bytes != 10<<20 ||
		l.MaxHeaderBytes.Bytes != 16<<10 || l.MaxConnections != 10000 {
		t.Errorf("listener defaults: %+v", l)
	}
	if l.TLS.MinVersion != "1.2" || l.TLS.ClientAuth != "none" || strings.Join(l.TLS.ALPN, ",") != "h2,http/1.1" {
		t.Errorf("tls defaults: %+v", l.TLS)
	}
	if !filepath.IsAbs(l.TLS.Cert) || !strings.HasSuffix(l.TLS.Cert, "certs/site.pem") {
		t.Errorf("cert path %q not resolved against the config's folder", l.TLS.Cert)
	}
	p := cfg.Pools[0]
	if p.Algorithm != "round_robin" || p.Retries != 1 || p.ConnectTimeout.Duration != 2*time.Second ||
		p.ResponseTimeout.Duration != 30*time.Second || p.MaxConnsPerBackend != 512 {
		t.Errorf("pool defaults: %+v", p)
	}
	h := p.Health
	if h.Check != "tcp" || h.Path != "/healthz" || h.Interval.Duration != 2*time.Second || h.Timeout.Duration != time.Second ||
		h.Rise != 2 || h.Fall != 3 || h.ExpectStatus != "200-399" || h.PassiveFailures != 5 || h.SlowStart.Duration != 0 {
		t.Errorf("health defaults: %+v", h)
	}
	if !h.Expect.Contains(200) || !h.Expect.Contains(399) || h.Expect.Contains(404) {
		t.Errorf("expect_status parsed as %v", h.Expect)
	}
	if p.Backends[0].Weight != 1 {
		t.Errorf("weight default %d", p.Backends[0].Weight)
	}
}

func TestZeroValuesAreKeptWhenWritten(t *testing.T) {
	src := strings.Replace(minimal, `name = "web"`, `name = "web"
retries = 0
max_conns_per_backend = 0
  [pool.health]
  passive_failures = 0`, 1)
	src = strings.Replace(src, `address = "10.0.0.11:8080"`, `address = "10.0.0.11:8080"
  weight = 0`, 1)
	src = "[global]\nadmin = \"\"\naccess_log = \"\"\nwatch = false\n" + src
	cfg, err := parseIn(t, src)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools[0]
	if p.Retries != 0 || p.MaxConnsPerBackend != 0 || p.Health.PassiveFailures != 0 || p.Backends[0].Weight != 0 {
		t.Errorf("explicit zeros replaced by defaults: %+v", p)
	}
	if cfg.Global.Admin != "" || cfg.Global.AccessLog != "" || cfg.Global.Watch {
		t.Errorf("explicit empty values replaced: %+v", cfg.Global)
	}
}

// badConfigs are edits of minimal that Load must refuse, with a fragment
// of the error it must give.
var badConfigs = []struct {
	name string
	edit func(string) string
	want string // "line:key: message" fragment
}{
	{
		"unknown key",
		func(s string) string {
			return strings.Replace(s, `address = "10.0.0.11:8080"`, `adress = "10.0.0.11:8080"`, 1)
		},
		`:13: pool[0].backend[0].adress: unknown key (did you mean "address"?)`,
	},
	{
		"missing pool",
		func(s string) string { return strings.Replace(s, `pool = "web"`, `pool = "wbe"`, 1) },
		`:5: listener[0].pool: no pool named "wbe" (pools: "web")`,
	},
	{
		"bad duration",
		func(s string) string {
			return strings.Replace(s, `name = "web"`, `name = "web"
connect_timeout = "2"`, 1)
		},
		`:12: pool[0].connect_timeout: "2" is not a duration`,
	},
	{
		"duration without unit",
		func(s string) string {
			return strings.Replace(s, `name = "web"`, `name = "web"
response_timeout = 30`, 1)
		},
		`:12: pool[0].response_timeout: 30 has no unit`,
	},
	{
		"duplicate name",
		func(s string) string {
			return s + "\n[[pool]]\nname = \"web\"\n  [[pool.backend]]\n  address = \"10.0.0.12:80\"\n"
		},
		`:16: pool[1].name: duplicate name "web" (also pool[0])`,
	},
	{
		"bad address",
		func(s string) string { return strings.Replace(s, `"10.0.0.11:8080"`, `"10.0.0.11"`, 1) },
		`:13: pool[0].backend[0].address: "10.0.0.11" is not host:port (missing port in address)`,
	},
	{
		"port out of range",
		func(s string) string { return strings.Replace(s, `"10.0.0.11:8080"`, `"10.0.0.11:80800"`, 1) },
		`pool[0].backend[0].address: "10.0.0.11:80800" has a bad port`,
	},
	{
		"unreadable cert",
		func(s string) string { return strings.Replace(s, `certs/site.pem`, `certs/missing.pem`, 1) },
		`:7: listener[0].tls.cert: cannot read `,
	},
	{
		"negative limit per client",
		func(s string) string {
			return strings.Replace(s, `pool = "web"`, "pool = \"web\"\nmax_connections_per_client = -1", 1)
		},
		`:6: listener[0].max_connections_per_client: must be 0 (no limit) or more (got -1)`,
	},
	{
		"limit per client behind a balancer",
		func(s string) string {
			return strings.Replace(s, `pool = "web"`, "pool = \"web\"\naccept_proxy_protocol = true\nmax_connections_per_client = 5", 1)
		},
		`:7: listener[0].max_connections_per_client: counts the addresses connections come from`,
	},
	{
		"cert that is a device",
		func(s string) string { return strings.Replace(s, `certs/site.pem`, `/dev/zero`, 1) },
		`:7: listener[0].tls.cert: /dev/zero is not a regular file`,
	},
	{
		"key that is a folder",
		func(s string) string { return strings.Replace(s, `certs/site.key`, `certs`, 1) },
		`:8: listener[0].tls.key: `,
	},
	{
		"cert and key that do not match",
		func(s string) string { return strings.Replace(s, `certs/site.key`, `certs/api.key`, 1) },
		`listener[0].tls.cert: cannot load`,
	},
	{
		"bad enum",
		func(s string) string {
			return strings.Replace(s, `name = "web"`, `name = "web"
algorithm = "random"`, 1)
		},
		`:12: pool[0].algorithm: "random" is not one of round_robin, least_conn`,
	},
	{
		"bad client abort policy",
		func(s string) string {
			return strings.Replace(s, `name = "web"`, `name = "web"
on_client_abort = "ignore"`, 1)
		},
		`:12: pool[0].on_client_abort: "ignore" is not one of cancel, finish`,
	},
	{
		"bad size",
		func(s string) string {
			return strings.Replace(s, `pool = "web"`, `pool = "web"
max_request_body = "10 parsecs"`, 1)
		},
		`:6: listener[0].max_request_body: "10 parsecs" is not a size`,
	},
	{
		"body memory too small",
		func(s string) string { return "[global]\nmax_body_memory = \"64KiB\"\n" + s },
		`:2: global.max_body_memory: must be at least 1048576 bytes (got 65536)`,
	},
	{
		"no body memory limit",
		func(s string) string { return "[global]\nmax_body_memory = 0\n" + s },
		`:2: global.max_body_memory: 0 would leave what clients can make lb hold unbounded`,
	},
	{
		"wrong type",
		func(s string) string {
			return strings.Replace(s, `address = "10.0.0.11:8080"`, `address = "10.0.0.11:8080"
  weight = "heavy"`, 1)
		},
		`:14: pool[0].backend[0].weight: must be an integer, not a string`,
	},
	{
		"syntax error",
		func(s string) string { return strings.Replace(s, `name = "web"`, `name = "web`, 1) },
		`:11: pool.name: strings cannot contain newlines`,
	},
	{
		"tls 1.1",
		func(s string) string {
			return strings.Replace(s, `key = "certs/site.key"`, `key = "certs/site.key"
  min_version = "1.1"`, 1)
		},
		`:9: listener[0].tls.min_version: "1.1" is not one of "1.2", "1.3"`,
	},
	{
		"route without pool",
		func(s string) string {
			return strings.Replace(s, "[[pool]]", "  [[listener.route]]\n  host = \"api.example.com\"\n\n[[pool]]", 1)
		},
		`:10: listener[0].route[0].pool: missing`,
	},
	{
		"bad expect_status",
		func(s string) string {
			return strings.Replace(s, `name = "web"`, "name = \"web\"\n  [pool.health]\n  expect_status = \"2xx\"", 1)
		},
		`:13: pool[0].health.expect_status: "2xx" is not a status code or range`,
	},
	{
		"client_auth without client_ca",
		func(s string) string {
			return strings.Replace(s, `key = "certs/site.key"`, `key = "certs/site.key"
  client_auth = "require"`, 1)
		},
		`listener[0].tls.client_ca: missing (PEM bundle of the CAs that sign client certificates; client_auth = "require" needs it)`,
	},
	{
		"client_ca that is not a CA bundle",
		func(s string) string {
			return strings.Replace(s, `key = "certs/site.key"`, `key = "certs/site.key"
  client_auth = "request"
  client_ca = "certs/site.key"`, 1)
		},
		`:10: listener[0].tls.client_ca: `,
	},
	{
		"bad client_auth",
		func(s string) string {
			return strings.Replace(s, `key = "certs/site.key"`, `key = "certs/site.key"
  client_auth = "optional"`, 1)
		},
		`:9: listener[0].tls.client_auth: "optional" is not one of none, request, require`,
	},
	{
		"no listeners",
		func(s string) string { return s[strings.Index(s, "[[pool]]"):] },
		`listener: at least one [[listener]] is required`,
	},
}

func TestBadConfigs(t *testing.T) {
	for _, tc := range badConfigs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIn(t, tc.edit(minimal))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
			if !strings.Contains(err.Error(), "lb.toml") {
				t.Errorf("error does not name the file: %v", err)
			}
		})
	}
}

func TestEveryErrorIsReported(t *testing.T) {
	src := strings.NewReplacer(
		`bind = "127.0.0.1:8443"`, `bind = "127.0.0.1"`,
		`pool = "web"`, `pool = "nope"`,
		`address = "10.0.0.11:8080"`, `address = "x"
  weight = 1000`,
	).Replace(minimal)
	_, err := parseIn(t, src)
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %v is not Errors", err)
	}
	if len(errs) != 4 {
		t.Fatalf("got %d errors, want 4:\n%v", len(errs), err)
	}
	for i := 1; i < len(errs); i++ {
		if errs[i].Line < errs[i-1].Line {
			t.Errorf("errors not in file order:\n%v", err)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{
		"512": 512, "512B": 512, "16KiB": 16 << 10, "16KB": 16000, "10MiB": 10 << 20,
		"10MB": 10_000_000, "1GiB": 1 << 30, "2k": 2048, " 3 MiB ": 3 << 20,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ten", "-1", "1.5MB", "5XB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestKeyLines(t *testing.T) {
	src := `# comment
[global]
log_level = "info" # trailing [not a table]

[[listener]]
name = "a"
  [listener.tls]
  alpn = [
    "h2",
    "http/1.1",
  ]
  cert = """
multi
line = "not a key"
"""
  [[listener.route]]
  host = "x"
  [[listener.route]]
  "path_prefix" = "/"
[[listener]]
name = "b"
[[pool]]
health.rise = 3
`
	idx := indexKeys(src)
	for path, line := range map[string]int{
		"global":                           2,
		"global.log_level":                 3,
		"listener[0]":                      5,
		"listener[0].name":                 6,
		"listener[0].tls":                  7,
		"listener[0].tls.alpn":             8,
		"listener[0].tls.cert":             12,
		"listener[0].route[0].host":        17,
		"listener[0].route[1].path_prefix": 19,
		"listener[1].name":                 21,
		"pool[0].health.rise":              23,
	} {
		if got := idx.lookup(path); got != line {
			t.Errorf("%s: line %d, want %d", path, got, line)
		}
	}
	if idx.has("listener[0].tls.line") {
		t.Error("a line inside a multi-line string was taken for a key")
	}
	if got := idx.lookup("listener[1].tls.cert"); got != 20 {
		t.Errorf("missing key should point at its table: line %d", got)
	}
}

func TestExamplesAreValid(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*.toml")
	if len(files) == 0 {
		t.Fatal("no examples found")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parseIn(t, string(src)); err != nil {
				t.Fatalf("%s does not validate:\n%v", f, err)
			}
		})
	}
}

func TestReadPEMBoundsTheFile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, make([]byte, MaxPEMFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPEM(big); err == nil || !strings.Contains(err.Error(), "larger than 4 MiB") {
		t.Errorf("a file over the limit: %v", err)
	}
	small := filepath.Join(dir, "small.pem")
	if err := os.WriteFile(small, []byte("-----BEGIN X-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadPEM(small); err != nil || len(b) != 18 {
		t.Errorf("a small file: %d bytes, %v", len(b), err)
	}
	if _, err := ReadPEM(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a folder: %v", err)
	}
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := ReadPEM(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("a named pipe: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("reading a named pipe hangs")
	}
}

func TestTicketKeysFile(t *testing.T) {
	dir := t.TempDir()
	key := func(n int) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{byte(n)}, 32)) }
	write := func(name, src string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.key", "# rotated 2026-11-26\n"+key(2)+"\n\n"+key(1)+"\n", 0o600)
	keys, err := ReadTicketKeys(good)
	if err != nil || len(keys) != 2 || keys[0][0] != 2 || keys[1][0] != 1 {
		t.Fatalf("good file: %d keys, %v", len(keys), err)
	}
	for _, tc := range []struct{ src, want string }{
		{"", "holds no key"},
		{"# only a comment\n", "holds no key"},
		{key(1) + "\n" + "c2hvcnQ=\n", "line 2: not a key"},
		{key(1) + "\nnot base64!\n", "line 2: not a key"},
		{strings.Repeat(key(1)+"\n", MaxTicketKeys+1), "more than 64 keys"},
	} {
		_, err := ReadTicketKeys(write("bad.key", tc.src, 0o600))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.want)
		}
	}

	// In a config: resolved beside it, checked, and a key file others can
	// read is warned about.
	for _, tc := range []struct {
		mode    os.FileMode
		warning bool
	}{{0o600, false}, {0o644, true}} {
		path := write(fmt.Sprintf("shared-%o.key", tc.mode), key(7)+"\n", tc.mode)
		if err := os.Chmod(path, tc.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		cfg, err := parseIn(t, strings.Replace(minimal, `key = "certs/site.key"`,
			`key = "certs/site.key"`+"\n  ticket_keys = "+strconv.Quote(path), 1))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Listeners[0].TLS.TicketKeys != path {
			t.Errorf("ticket_keys %q, want %q", cfg.Listeners[0].TLS.TicketKeys, path)
		}
		warned := strings.Contains(strings.Join(cfg.Warnings, "\n"), "ticket_keys")
		if warned != tc.warning {
			t.Errorf("mode %o: warnings %q", tc.mode, cfg.Warnings)
		}
	}
	_, err = parseIn(t, strings.Replace(minimal, `key = "certs/site.key"`,
		`key = "certs/site.key"`+"\n  ticket_keys = \"certs/missing.key\"", 1))
	if err == nil || !strings.Contains(err.Error(), ":9: listener[0].tls.ticket_keys: cannot read ") {
		t.Errorf("missing key file: %v", err)
	}
}
