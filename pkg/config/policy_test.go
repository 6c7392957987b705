package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// withRoute adds a route with keys to minimal's listener.
func withRoute(listenerKeys, routeKeys string) string {
	return strings.Replace(minimal, "  [listener.tls]", listenerKeys+`
  [[listener.route]]
  path_prefix = "/api/"
`+routeKeys+`
  [listener.tls]`, 1)
}

func TestPolicyConfig(t *testing.T) {
	cfg, err := parseIn(t, withRoute(`allow = ["10.0.0.0/8", "192.0.2.7"]
deny = ["10.6.6.0/24"]
  [listener.headers]
  request_set = { "X-Env" = "prod" }
  response_remove = ["Server"]`, `  pool = "web"
  strip_prefix = true
  deny = ["203.0.113.0/24"]
    [listener.route.headers]
    response_set = { "X-Frame-Options" = "DENY" }
  [[listener.route]]
  host = "old.example.com"
  redirect = "https://www.example.com/"`))
	if err != nil {
		t.Fatal(err)
	}
	ln := cfg.Listeners[0]
	if len(ln.Allow) != 2 || ln.Headers.RequestSet["X-Env"] != "prod" || !ln.Routes[0].StripPrefix || ln.Routes[1].Redirect != "https://www.example.com/" || ln.Routes[1].Pool != "" {
		t.Errorf("%+v", ln)
	}
}

func TestPolicyConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, listener, route, want string }{
		{"bad allow", `allow = ["10.0.0.1/8"]`, `  pool = "web"`, `listener[0].allow[0]: "10.0.0.1/8" has bits set past its length: did you mean 10.0.0.0/8?`},
		{"bad deny", `deny = ["evil"]`, `  pool = "web"`, `listener[0].deny[0]: "evil" is not an address`},
		{"route bad deny", ``, `  pool = "web"
  deny = ["300.0.0.0/8"]`, `listener[0].route[0].deny[0]`},
		{"lb's own header", `  [listener.headers]
  request_set = { "X-Forwarded-For" = "1.2.3.4" }`, `  pool = "web"`, `listener[0].headers.request_set: X-Forwarded-For is lb's to set`},
		{"framing header", `  [listener.headers]
  response_remove = ["Content-Length"]`, `  pool = "web"`, `listener[0].headers.response_remove: Content-Length frames the message`},
		{"header injection", `  [listener.headers]
  response_set = { "X-A" = "b\r\nX-Evil: 1" }`, `  pool = "web"`, `listener[0].headers.response_set: X-A: "b\r\nX-Evil: 1" holds a line break`},
		{"strip without prefix", ``, `  pool = "web"
  strip_prefix = true
  [[listener.route]]
  host = "a.example.com"
  pool = "web"
  strip_prefix = true`, `listener[0].route[1].strip_prefix: needs path_prefix`},
		{"redirect and pool", ``, `  pool = "web"
  redirect = "https://www.example.com"`, `listener[0].route[0].redirect: a route either redirects or sends to a pool`},
		{"redirect with path", ``, `  redirect = "https://www.example.com/new"`, `only an origin`},
		{"redirect not http", ``, `  redirect = "ftp://www.example.com"`, `want http:// or https://`},
		{"no pool, no redirect", ``, ``, `listener[0].route[0].pool: missing`},
		{"rate zero", `  [listener.limits]
  rate = 0`, `  pool = "web"`, `listener[0].limits.rate: 0 is out of range`},
		{"negative burst", `  [listener.limits]
  rate = 5
  burst = -1`, `  pool = "web"`, `listener[0].limits.burst: -1 is out of range`},
		{"route rate", ``, `  pool = "web"
    [listener.route.limits]
    rate = -2`, `listener[0].route[0].limits.rate: -2 is out of range`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIn(t, withRoute(tc.listener, tc.route))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}

func TestLimitsDefaultBurst(t *testing.T) {
	cfg, err := parseIn(t, withRoute(`  [listener.limits]
  rate = 2.5`, `  pool = "web"
    [listener.route.limits]
    rate = 0.2`))
	if err != nil {
		t.Fatal(err)
	}
	if l := cfg.Listeners[0].Limits; l.Burst != 3 {
		t.Errorf("burst for rate 2.5: %d, want 3", l.Burst)
	}
	if l := cfg.Listeners[0].Routes[0].Limits; l.Burst != 1 {
		t.Errorf("burst for rate 0.2: %d, want 1", l.Burst)
	}
}

func TestHtpasswd(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const hash = "$2y$05$abcdefghijklmnopqrstuu0eO8jYqJq8N8hBzKiC1k0o3QeRYl8Ny"
	users, err := ReadHtpasswd(write("ok", "# admins\nalice:"+hash+"\n\nbob:"+strings.Replace(hash, "$2y$", "$2b$", 1)+"\n"))
	if err != nil || len(users) != 2 || string(users["alice"]) != hash {
		t.Fatalf("%v %v", users, err)
	}
	for content, want := range map[string]string{
		"alice:$apr1$xyz$abc\n":             "line 1: user alice: not a bcrypt hash",
		"alice:{SHA}abc\n":                  "not a bcrypt hash",
		"# none\n":                          "holds no user",
		"alice\n":                           `line 1: not "user:hash"`,
		"alice:" + hash + "\nalice:" + hash: "line 2: user alice is there twice",
	} {
		if _, err := ReadHtpasswd(write("bad", content)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", content, err, want)
		}
	}
}
