package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/internal/certgen"
)

const testToken = "s3cret-admin-token-0123456789"

func withGlobal(global string) string { return "[global]\n" + global + "\n" + minimal }

func TestAdminToken(t *testing.T) {
	t.Run("file relative to the config", func(t *testing.T) {
		dir := t.TempDir()
		writeCerts(t, dir)
		if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte(testToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "lb.toml")
		os.WriteFile(path, []byte(withGlobal(`admin_token = "file:admin.token"`)), 0o644)
		cfg, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(cfg.Global.AdminTokenValue) != testToken {
			t.Errorf("token %q", string(cfg.Global.AdminTokenValue))
		}
	})
	t.Run("environment", func(t *testing.T) {
		t.Setenv("LB_TEST_ADMIN_TOKEN", testToken)
		cfg, err := parseIn(t, withGlobal(`admin_token = "env:LB_TEST_ADMIN_TOKEN"`))
		if err != nil {
			t.Fatal(err)
		}
		if string(cfg.Global.AdminTokenValue) != testToken {
			t.Errorf("token %q", string(cfg.Global.AdminTokenValue))
		}
	})
	t.Setenv("LB_TEST_SHORT_TOKEN", "short")
	for _, tc := range []struct{ name, global, want string }{
		{"literal", `admin_token = "` + testToken + `"`, `lb.toml:3: global.admin_token: must be "file:PATH" or "env:NAME"`},
		{"missing file", `admin_token = "file:nope.token"`, `lb.toml:3: global.admin_token: cannot read `},
		{"unset variable", `admin_token = "env:LB_TEST_UNSET_TOKEN"`, `lb.toml:3: global.admin_token: environment variable LB_TEST_UNSET_TOKEN is not set or empty`},
		{"short", `admin_token = "env:LB_TEST_SHORT_TOKEN"`, `lb.toml:3: global.admin_token: the token in env:LB_TEST_SHORT_TOKEN is 5 bytes; use at least 16`},
		{"host with port", `admin_hosts = ["lb.internal:9100"]`, `lb.toml:3: global.admin_hosts[0]: "lb.internal:9100" is not a host name`},
		{"inner wildcard", `admin_hosts = ["ok.example", "a.*.example"]`, `lb.toml:3: global.admin_hosts[1]: "a.*.example" is not a host name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIn(t, withGlobal(`admin = "127.0.0.1:9100"`+"\n"+tc.global))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Errorf("the error shows the token: %v", err)
			}
		})
	}
}

func TestAdminBeyondLoopbackWarns(t *testing.T) {
	t.Setenv("LB_TEST_ADMIN_TOKEN", testToken)
	for _, tc := range []struct {
		global string
		warn   bool
	}{
		{`admin = "0.0.0.0:9100"`, true},
		{`admin = ":9100"`, true},
		{`admin = "[::]:9100"`, true},
		{`admin = "10.1.2.3:9100"`, true},
		{`admin = "lb.internal:9100"`, true},
		{`admin = "0.0.0.0:9100"` + "\nadmin_token = \"env:LB_TEST_ADMIN_TOKEN\"", false},
		{`admin = "127.0.0.1:9100"`, false},
		{`admin = "[::1]:9100"`, false},
		{`admin = "localhost:9100"`, false},
		{`admin = ""`, false},
	} {
		cfg, err := parseIn(t, withGlobal(tc.global))
		if err != nil {
			t.Fatalf("%s: %v", tc.global, err)
		}
		warned := strings.Contains(strings.Join(cfg.Warnings, "\n"), "global.admin_token is not set")
		if warned != tc.warn {
			t.Errorf("%s: warned %v, want %v (%q)", tc.global, warned, tc.warn, cfg.Warnings)
		}
		if tc.warn && !strings.Contains(cfg.Warnings[0], "line 2: global.admin:") {
			t.Errorf("%s: warning does not name the line and key: %q", tc.global, cfg.Warnings[0])
		}
	}
}

// TestSecretDoesNotPrint: a config logged or encoded whole, by mistake,
// does not show the token.
func TestSecretDoesNotPrint(t *testing.T) {
	g := Global{AdminToken: "env:X", AdminTokenValue: Secret(testToken)}
	var logged bytes.Buffer
	for _, json := range []bool{false, true} {
		hclog.New(&hclog.LoggerOptions{Output: &logged, JSONFormat: json}).Info("config", "global", g, "token", g.AdminTokenValue)
	}
	j, _ := json.Marshal(g)
	out := fmt.Sprintf("%v %+v %#v %s %s", g, g, g, g.AdminTokenValue, j) + logged.String()
	if strings.Contains(out, testToken) {
		t.Errorf("the token shows in:\n%s", out)
	}
	if !strings.Contains(out, "[redacted]") {
		t.Errorf("no [redacted] in:\n%s", out)
	}
}

// TestDockerExampleNeedsToken: the Docker example's admin server listens
// on every interface of the container, so it takes a token, and loads
// without the warning once the token is in the environment.
func TestDockerExampleNeedsToken(t *testing.T) {
	src, err := os.ReadFile("../../examples/docker/lb.toml")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := certgen.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	files := ParseOptions{Files: map[string][]byte{"/etc/lb/certs/site.pem": pair.CertPEM, "/etc/lb/certs/site.key": pair.KeyPEM}}
	t.Setenv("LB_ADMIN_TOKEN", "")
	if _, err := ParseWith(src, "lb.toml", files); err == nil || !strings.Contains(err.Error(), "global.admin_token: environment variable LB_ADMIN_TOKEN is not set") {
		t.Errorf("without LB_ADMIN_TOKEN: %v", err)
	}
	t.Setenv("LB_ADMIN_TOKEN", testToken)
	cfg, err := ParseWith(src, "lb.toml", files)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) > 0 || string(cfg.Global.AdminTokenValue) != testToken {
		t.Errorf("warnings %q, token set %v", cfg.Warnings, cfg.Global.AdminTokenValue != "")
	}
}
