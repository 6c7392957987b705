package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/testutil"
)

// The thresholds of TestCacheTestSuite: lb's scores on the HTTP cache
// test suite (cache-tests.fyi) as docs/cache.md gives them, less a margin
// for its few timing-sensitive tests. A change that costs more fails.
const (
	cacheTestsRequired = 145 // of 150; lb scores 147
	cacheTestsOptimal  = 78  // of 98; lb scores 80
)

// TestCacheTestSuite runs the public HTTP cache test suite behind
// cache-tests.fyi through the real lb binary: the suite's own origin
// server behind a pool with [pool.cache], and its client against lb. The
// suite is taken from $LB_CACHE_TESTS or from shared/cache-tests beside
// the checkout, copied to a temporary folder where npm installs its
// dependencies. It is skipped when the suite, node or npm is missing.
func TestCacheTestSuite(t *testing.T) {
	suite := os.Getenv("LB_CACHE_TESTS")
	if suite == "" {
		suite = filepath.Join("..", "..", "shared", "cache-tests")
	}
	if _, err := os.Stat(filepath.Join(suite, "tests", "index.mjs")); err != nil {
		t.Skipf("the HTTP cache test suite is not at %s (set LB_CACHE_TESTS to its folder): %v", suite, err)
	}
	node := needTool(t, "node")
	npm := needTool(t, "npm")
	// The suite's client (undici 7) needs Node.js 20.18 or later; Debian 12's
	// own nodejs is 18, where the suite cannot run at all.
	if out, err := exec.Command(node, "-e", `const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)`).CombinedOutput(); err != nil {
		v, _ := exec.Command(node, "--version").Output()
		t.Skipf("the HTTP cache test suite needs Node.js 20.18 or later; %s is %s %s", node, strings.TrimSpace(string(v)), out)
	}
	score, err := filepath.Abs(filepath.Join("testdata", "cache-tests-score.mjs"))
	if err != nil {
		t.Fatal(err)
	}

	// The suite's folder is read-only and shared: npm works in a copy.
	work := t.TempDir()
	if err := os.CopyFS(work, os.DirFS(suite)); err != nil {
		t.Fatalf("copying the suite: %v", err)
	}
	os.RemoveAll(filepath.Join(work, "node_modules"))
	install := []string{"i", "--omit=dev", "--no-audit", "--no-fund"}
	if _, err := os.Stat(filepath.Join(work, "package-lock.json")); err == nil {
		install[0] = "ci"
	}
	if out, err := npmRun(t, work, 5*time.Minute, nil, npm, install...); err != nil {
		t.Skipf("npm %s failed (no registry?), cannot run the suite: %v\n%s", install[0], err, tail(out, 20))
	}

	// The suite's origin reads its port from npm's config (npm_config_port).
	_, port, _ := net.SplitHostPort(freePort(t))
	origin := exec.Command(npm, "run", "server")
	origin.Dir = work
	origin.Env = append(os.Environ(), "npm_config_port="+port, "npm_config_pidfile="+filepath.Join(work, "server.pid"))
	originOut := &testutil.SyncBuffer{}
	origin.Stdout, origin.Stderr = originOut, originOut
	origin.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // npm starts node: stop both
	if err := origin.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-origin.Process.Pid, syscall.SIGKILL) // it may have exited already
		_ = origin.Wait()                                      // killed: the error says so
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the suite's origin did not listen on %s:\n%s", port, originOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The cache as an operator would set it up: heuristic freshness on
	// (RFC 9111 section 4.2.2), everything else by default.
	lb := startLB(t, t.TempDir(), `
[global]
log_level = "info"
access_log = ""
admin = ""
watch = false

[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"

[[pool]]
name = "web"
  [pool.health]
  check = "none"
  [pool.cache]
  max_size = "64MiB"
  heuristic = true
  [[pool.backend]]
  address = "127.0.0.1:`+port+`"
`)
	out, err := npmRun(t, work, 8*time.Minute, nil, npm, "run", "--silent", "cli", "--base=http://"+lb.addrs["web"])
	if err != nil {
		t.Fatalf("the suite's client: %v\n%s", err, tail(out, 30))
	}
	start := strings.IndexByte(out, '{')
	if start < 0 {
		t.Fatalf("the suite's client printed no results:\n%s", tail(out, 30))
	}
	results := filepath.Join(work, "lb-results.json")
	if err := os.WriteFile(results, []byte(out[start:]), 0o644); err != nil {
		t.Fatal(err)
	}
	sout, err := npmRun(t, work, time.Minute, nil, node, score, results)
	if err != nil {
		t.Fatalf("scoring: %v\n%s", err, sout)
	}
	var s struct {
		Required, RequiredTotal, Optimal, OptimalTotal int
		Failed, OptimalFailed                          []string
	}
	if err := json.Unmarshal([]byte(sout), &s); err != nil {
		t.Fatalf("scoring: %v\n%s", err, sout)
	}
	t.Logf("HTTP cache test suite: required %d/%d, optimal %d/%d", s.Required, s.RequiredTotal, s.Optimal, s.OptimalTotal)
	t.Logf("required tests failed: %s", strings.Join(s.Failed, " "))
	t.Logf("optimal tests failed: %s", strings.Join(s.OptimalFailed, " "))
	if s.Required < cacheTestsRequired || s.Optimal < cacheTestsOptimal {
		t.Errorf("score %d/%d required, %d/%d optimal; want at least %d and %d (docs/cache.md)",
			s.Required, s.RequiredTotal, s.Optimal, s.OptimalTotal, cacheTestsRequired, cacheTestsOptimal)
	}
}

// npmRun runs a command in dir with a timeout and returns its standard
// output (standard error is added on failure).
func npmRun(t *testing.T, dir string, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}
