package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestBasicAuth: a route with basic_auth answers 401 with
// WWW-Authenticate without credentials or with wrong ones, passes a
// user's to the backend without the Authorization field, counts the
// failures, and takes a changed htpasswd file without a restart.
func TestBasicAuth(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	b := startBackend(t, "b1")
	var mu sync.Mutex
	var got http.Header
	b.setHook(func(r *http.Request) {
		mu.Lock()
		got = r.Header.Clone()
		mu.Unlock()
	})
	users := func(pairs ...string) {
		t.Helper()
		var sb strings.Builder
		for i := 0; i < len(pairs); i += 2 {
			h, err := bcrypt.GenerateFromPassword([]byte(pairs[i+1]), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			sb.WriteString(pairs[i] + ":" + string(h) + "\n")
		}
		// Written aside and renamed, as editors and config managers do.
		tmp := filepath.Join(dir, "users.tmp")
		if err := os.WriteFile(tmp, []byte(sb.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "users.htpasswd")); err != nil {
			t.Fatal(err)
		}
	}
	users("alice", "s3cret")
	cfg := strings.Replace(affinityConfigOn(freePort(t), `  [[listener.route]]
  path_prefix = "/admin/"
  pool = "web"
  basic_auth = "users.htpasswd"
  basic_auth_realm = "ops"`, "", `  check = "none"`, backendsTOML(b)), "watch = false", "watch = true", 1)
	lb := startLB(t, dir, cfg)
	c := certs.client(lb.addrs["https"], true)
	do := func(path, user, pass string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://www.example.com"+path, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if r := do("/admin/", "", ""); r.StatusCode != 401 || r.Header.Get("WWW-Authenticate") != `Basic realm="ops", charset="UTF-8"` {
		t.Errorf("no credentials: %d %q", r.StatusCode, r.Header.Get("WWW-Authenticate"))
	}
	if r := do("/admin/", "alice", "wrong"); r.StatusCode != 401 {
		t.Errorf("a wrong password: %d", r.StatusCode)
	}
	if r := do("/admin/", "alice", "s3cret"); r.StatusCode != 200 {
		t.Errorf("alice: %d", r.StatusCode)
	}
	mu.Lock()
	if got.Get("Authorization") != "" {
		t.Errorf("the backend got the credentials: %q", got.Get("Authorization"))
	}
	mu.Unlock()
	if r := do("/public", "", ""); r.StatusCode != 200 {
		t.Errorf("another route asked for credentials: %d", r.StatusCode)
	}
	if v := metricValue(lb.metricsText(), `lb_auth_failures_total{listener="https",reason="unauthorized",route="/admin/"}`); v != 2 {
		t.Errorf("lb_auth_failures_total = %v, want 2", v)
	}
	// bob is added and alice's password changed: the file's change
	// reloads the config.
	users("alice", "n3w", "bob", "b0b")
	deadline := time.Now().Add(10 * time.Second)
	for do("/admin/", "bob", "b0b").StatusCode != 200 {
		if time.Now().After(deadline) {
			t.Fatal("a user added to the htpasswd file was not let in within 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := do("/admin/", "alice", "s3cret"); r.StatusCode != 401 {
		t.Errorf("alice's old password after the change: %d", r.StatusCode)
	}
	// A broken file fails the reload; the users keep their access.
	if err := os.WriteFile(filepath.Join(dir, "users.htpasswd"), []byte("bob:plaintext\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lb.waitLog("reload failed: bad config", 1, 10*time.Second)
	if r := do("/admin/", "bob", "b0b"); r.StatusCode != 200 {
		t.Errorf("after a failed reload: %d", r.StatusCode)
	}
}
