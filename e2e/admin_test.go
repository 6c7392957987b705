package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func adminConfig(admin, extra string, b *backend) string {
	return fmt.Sprintf(`
[global]
access_log = ""
admin = %q
watch = false
%s

[[listener]]
name = "http"
bind = "127.0.0.1:0"
pool = "web"

[[pool]]
name = "web"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = %q
`, admin, extra, b.addr)
}

// adminDo sends a request to lb's admin server on 127.0.0.1 with the
// given Host ("" for the address) and headers.
func adminDo(t *testing.T, port, method, path, host string, hdr ...string) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://127.0.0.1:"+port+path, nil)
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAdminTokenAndHosts runs lb with its admin server on every interface
// and a token from a file: a rebound name is refused, the token is
// required to act and is never written to the log, a new token applies
// on reload, and the container health check still works.
func TestAdminTokenAndHosts(t *testing.T) {
	dir := t.TempDir()
	b := startBackend(t, "b1")
	token := "e2e-admin-token-" + strings.Repeat("x7", 12)
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := adminConfig("0.0.0.0:0", `admin_token = "file:admin.token"
admin_hosts = ["lb.test"]`, b)
	lb := startLB(t, dir, cfg)
	_, port, _ := net.SplitHostPort(lb.admin)
	if strings.Contains(lb.stderr.String(), "admin_token is not set") {
		t.Error("warned about a missing token that is set")
	}
	bearer := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }
	drain := "/pools/web/backends/" + b.addr + "/drain"
	evil := "evil.example:" + port

	for _, tc := range []struct {
		name, method, path, host string
		hdr                      []string
		code                     int
	}{
		{"rebound name, no token", "POST", drain, evil, []string{"Origin", "http://" + evil}, 403},
		{"rebound name reads status", "GET", "/status.json", evil, nil, 403},
		{"rebound name, healthz", "GET", "/healthz", evil, nil, 200},
		{"rebound name, metrics", "GET", "/metrics", evil, nil, 200},
		{"address, no token", "POST", drain, "", nil, 401},
		{"address, wrong token", "POST", drain, "", bearer(token + "y"), 401},
		{"address, token", "POST", drain, "", bearer(token), 200},
		{"localhost, token", "POST", "/pools/web/backends/" + b.addr + "/enable", "localhost:" + port, bearer(token), 200},
		{"configured name reads status", "GET", "/status.json", "lb.test:" + port, nil, 200},
		{"configured name, no token", "POST", "/reload", "lb.test:" + port, nil, 401},
	} {
		if code := adminDo(t, port, tc.method, tc.path, tc.host, tc.hdr...); code != tc.code {
			t.Errorf("%s: %s %s: %d, want %d", tc.name, tc.method, tc.path, code, tc.code)
		}
	}
	if lb.backendStatus("web", b.addr).State != "up" {
		t.Errorf("backend state %q after drain and enable", lb.backendStatus("web", b.addr).State)
	}

	// A new token in the file: the reload that reads it is the last one
	// the old token can start.
	token2 := "e2e-admin-token-2-" + strings.Repeat("k3", 12)
	if err := os.WriteFile(tokenFile, []byte(token2), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := adminDo(t, port, "POST", "/reload", "", bearer(token)...); code != 200 {
		t.Fatalf("reload with the old token: %d", code)
	}
	if code := adminDo(t, port, "POST", "/reload", "", bearer(token)...); code != 401 {
		t.Errorf("the old token after the reload: %d, want 401", code)
	}
	if code := adminDo(t, port, "POST", "/reload", "", bearer(token2)...); code != 200 {
		t.Errorf("the new token after the reload: %d, want 200", code)
	}
	// A token file made unusable fails the reload; the running token stays.
	os.WriteFile(tokenFile, []byte("short"), 0o600)
	if code := adminDo(t, port, "POST", "/reload", "", bearer(token2)...); code != 422 {
		t.Errorf("reload with a short token file: %d, want 422", code)
	}
	if code := adminDo(t, port, "POST", "/reload", "", bearer(token2)...); code != 422 {
		t.Errorf("the running token after a failed reload: %d, want 422 (accepted, reload refused)", code)
	}
	os.WriteFile(tokenFile, []byte(token2), 0o600)

	// lb -healthcheck, as the Dockerfile's HEALTHCHECK runs it, needs no token.
	cfgWithPort := adminConfig("0.0.0.0:"+port, `admin_token = "file:admin.token"`, b)
	hcPath := filepath.Join(dir, "hc.toml")
	os.WriteFile(hcPath, []byte(cfgWithPort), 0o644)
	if out, err := exec.Command(lbBin, "-healthcheck", "-config", hcPath).CombinedOutput(); err != nil {
		t.Errorf("lb -healthcheck: %v\n%s", err, out)
	}

	lb.waitLog("admin request refused", 5, 5*time.Second)
	log := lb.stderr.String() + lb.stdout.String()
	for _, tok := range []string{token, token2, token[:16], token2[:16]} {
		if strings.Contains(log, tok) {
			t.Errorf("lb's log shows the token %q:\n%s", tok, log)
		}
	}
}

// TestAdminBeyondLoopbackWarns: an admin server on every interface with
// no token is said to be open, at start and by lb -check.
func TestAdminBeyondLoopbackWarns(t *testing.T) {
	dir := t.TempDir()
	b := startBackend(t, "b1")
	lb := startLB(t, dir, adminConfig("0.0.0.0:0", "", b))
	lb.waitLog("global.admin_token is not set", 1, 5*time.Second)
	out, err := exec.Command(lbBin, "-check", "-config", lb.path()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "warning: line 4: global.admin: 0.0.0.0:0 can be reached from other machines") {
		t.Errorf("lb -check: %v\n%s", err, out)
	}
	loop := adminConfig("127.0.0.1:0", "", b)
	os.WriteFile(lb.path(), []byte(loop), 0o644)
	out, _ = exec.Command(lbBin, "-check", "-config", lb.path()).CombinedOutput()
	if strings.Contains(string(out), "admin_token") {
		t.Errorf("warned for an admin server on loopback:\n%s", out)
	}
}
