package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// withPool adds keys to minimal's pool (before its backend) and tables
// after it.
func withPool(keys, after string) string {
	s := strings.Replace(minimal, "  [[pool.backend]]\n  address = \"10.0.0.11:8080\"\n", keys+"\n  [[pool.backend]]\n  address = \"10.0.0.11:8080\"\n", 1)
	return s + after
}

func TestAffinityConfig(t *testing.T) {
	cfg, err := parseIn(t, withPool(`algorithm = "hash"
hash_key = "header:X-Tenant"
hash_balance = 1.25
  [pool.sticky]
  max_age = "1h"`, `  [[pool.backend]]
  address = "10.0.0.12:8080"
  backup = true
`))
	if err != nil {
		t.Fatal(err)
	}
	pl := cfg.Pools[0]
	if pl.Key != (HashKey{Kind: "header", Name: "X-Tenant"}) || pl.HashBalance != 1.25 {
		t.Errorf("hash: %+v %v", pl.Key, pl.HashBalance)
	}
	st := pl.Sticky
	if st.Cookie != "lb_srv" || st.SameSite != "lax" || st.Path != "/" || st.HTTPOnly == nil || !*st.HTTPOnly || st.Secure != nil || st.MaxAge.Duration.Hours() != 1 {
		t.Errorf("sticky defaults: %+v", st)
	}
	if !pl.Backends[1].Backup || pl.Backends[0].Backup {
		t.Errorf("backup: %+v", pl.Backends)
	}
	for _, algo := range []string{"random_two", "least_time", "least_conn", "round_robin"} {
		if _, err := parseIn(t, withPool(`algorithm = "`+algo+`"`, "")); err != nil {
			t.Errorf("algorithm %s: %v", algo, err)
		}
	}
}

func TestAffinityConfigErrors(t *testing.T) {
	tcp := `
[[listener]]
name = "db"
bind = "127.0.0.1:5433"
mode = "tcp"
pool = "web"
`
	for _, tc := range []struct {
		name, keys, after, want string
	}{
		{"unknown algorithm", `algorithm = "ip_hash"`, "", `pool[0].algorithm: "ip_hash" is not one of round_robin, least_conn, random_two, least_time, hash`},
		{"hash without key", `algorithm = "hash"`, "", `pool[0].hash_key: missing`},
		{"key without hash", `hash_key = "uri"`, "", `pool[0].hash_key: is set but algorithm is "round_robin"`},
		{"bad key", `algorithm = "hash"
hash_key = "path"`, "", `pool[0].hash_key: "path" is not one of client_ip, uri, header:NAME, cookie:NAME`},
		{"bad header name", `algorithm = "hash"
hash_key = "header:X Tenant"`, "", `is not a header name`},
		{"balance too low", `algorithm = "hash"
hash_key = "uri"
hash_balance = 0.9`, "", `pool[0].hash_balance: 0.9 is out of range`},
		{"balance without hash", `hash_balance = 1.5`, "", `pool[0].hash_balance: is set but algorithm is "round_robin"`},
		{"bad cookie name", `  [pool.sticky]
  cookie = "lb srv"`, "", `pool[0].sticky.cookie: "lb srv" is not a cookie name`},
		{"bad same_site", `  [pool.sticky]
  same_site = "loose"`, "", `pool[0].sticky.same_site: "loose" is not one of lax, strict, none`},
		{"same_site none without secure", `  [pool.sticky]
  same_site = "none"
  secure = false`, "", `pool[0].sticky.same_site: "none" needs secure = true`},
		{"same_site none, secure unset", `  [pool.sticky]
  same_site = "none"`, "", `pool[0].sticky.same_site: "none" needs secure = true`},
		{"missing secret file", `  [pool.sticky]
  secret_file = "nowhere.key"`, "", `pool[0].sticky.secret_file: cannot read`},
		{"only backups", "", "", `every backend of pool "web" is a backup`},
		{"sticky on tcp", `  [pool.sticky]`, tcp, `listener[1].pool: pool "web" has [pool.sticky], which needs HTTP`},
		{"uri hash on tcp", `algorithm = "hash"
hash_key = "uri"`, tcp, `listener[1].pool: pool "web" hashes by uri, which needs HTTP`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := withPool(tc.keys, tc.after)
			if tc.name == "only backups" {
				src = strings.Replace(src, `address = "10.0.0.11:8080"`, `address = "10.0.0.11:8080"
  backup = true`, 1)
			}
			_, err := parseIn(t, src)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
	// client_ip is a tcp pool's key.
	if _, err := parseIn(t, withPool(`algorithm = "hash"
hash_key = "client_ip"`, tcp)); err != nil {
		t.Errorf("a tcp listener's pool hashed by client_ip: %v", err)
	}
}

func TestStickySecretFile(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	write := func(name, content string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	load := func(secret string) (*Config, error) {
		write("lb.toml", withPool("  [pool.sticky]\n  secret_file = \""+secret+"\"", ""), 0o644)
		return Load(filepath.Join(dir, "lb.toml"))
	}
	write("short.key", "abc\n", 0o600)
	if _, err := load("short.key"); err == nil || !strings.Contains(err.Error(), "a secret needs at least 16") {
		t.Errorf("a 3-byte secret: %v", err)
	}
	write("good.key", "  c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0Cg==\n", 0o600)
	cfg, err := load("good.key")
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.Pools[0].Sticky.Secret) != "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0Cg==" {
		t.Errorf("secret %q", cfg.Pools[0].Sticky.Secret)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}
	write("open.key", "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0Cg==\n", 0o644)
	cfg, err = load("open.key")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "can be read by other users") {
		t.Errorf("a world-readable secret: warnings %q", cfg.Warnings)
	}
}

func TestErrorPagesConfig(t *testing.T) {
	dir := t.TempDir()
	writeCerts(t, dir)
	os.MkdirAll(filepath.Join(dir, "pages"), 0o755)
	os.WriteFile(filepath.Join(dir, "pages", "maintenance.html"), []byte("<h1>Back soon</h1>"), 0o644)
	os.WriteFile(filepath.Join(dir, "pages", "502.json"), []byte(`{"error":"bad gateway"}`), 0o644)
	load := func(pages string) (*Config, error) {
		src := strings.Replace(minimal, "[[pool]]", "  [listener.error_pages]\n"+pages+"\n[[pool]]", 1)
		os.WriteFile(filepath.Join(dir, "lb.toml"), []byte(src), 0o644)
		return Load(filepath.Join(dir, "lb.toml"))
	}
	cfg, err := load(`  "503" = "pages/maintenance.html"
  "502" = "pages/502.json"`)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Listeners[0].Pages
	if string(p[503].Body) != "<h1>Back soon</h1>" || p[503].ContentType != "text/html; charset=utf-8" || p[502].ContentType != "application/json" {
		t.Errorf("pages: %+v", p)
	}
	for _, tc := range []struct{ pages, want string }{
		{`  "503" = "pages/nowhere.html"`, `listener[0].error_pages.503: cannot read`},
		{`  "200" = "pages/maintenance.html"`, `listener[0].error_pages.200: "200" is not a status`},
		{`  "5xx" = "pages/maintenance.html"`, `"5xx" is not a status`},
		{`  "503" = "pages"`, `is not a regular file`},
	} {
		if _, err := load(tc.pages); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.pages, err, tc.want)
		}
	}
}
