package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/atomic"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
)

// startServer starts lb on a config given as TOML, stopped when the test
// ends.
func startServer(t *testing.T, src string) *Server {
	t.Helper()
	s, err := New(parseConfig(t, src), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx) // the test is over
	})
	return s
}

func parseConfig(t *testing.T, src string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(src), "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// reload applies src as a reload would.
func reload(t *testing.T, s *Server, src string) {
	t.Helper()
	if err := s.Reload(parseConfig(t, src)); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// currentPool is the running config's pool of that name.
func currentPool(s *Server, name string) *pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap.pools[name]
}

// waitFor polls cond until it holds or d passes, and reports whether it
// held.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

const holdDownConfig = `
[global]
admin = ""
access_log = ""
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
[[pool]]
name = "web"
  [pool.health]
  check = "none"
  interval = "300ms"
  passive_failures = 1
  [[pool.backend]]
  address = "127.0.0.1:1"
  [[pool.backend]]
  address = "127.0.0.1:2"
`

// TestPassiveHoldDownSurvivesReload: in a pool without active checks, a
// backend taken down by passive failures comes back when its hold-down
// ends even if a reload replaced the monitor that took it down, and a
// failure reported to a replaced monitor leaves no backend down for good.
func TestPassiveHoldDownSurvivesReload(t *testing.T) {
	s := startServer(t, holdDownConfig)
	old := currentPool(s, "web")
	b := old.upstream.Pool.Backends[0]
	down := time.Now()
	old.monitor.ReportFailure(b, "connection refused")
	if b.Up() {
		t.Fatal("a passive failure did not take the backend down")
	}
	reload(t, s, holdDownConfig)
	cur := currentPool(s, "web")
	if cur == old || cur.upstream.Pool.Backends[0].State != b.State {
		t.Fatal("the reload did not build a new pool sharing the backend's state")
	}
	if !waitFor(5*time.Second, b.Up) {
		t.Fatal("the backend stayed down after its hold-down, across a reload")
	}
	if d := time.Since(down); d < 250*time.Millisecond {
		t.Errorf("the backend came back after %s, before its 300ms hold-down ended", d)
	}
	// The new pool sends it requests again.
	seen := map[string]bool{}
	for range 4 {
		x, err := cur.upstream.Pool.Acquire(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		seen[x.Address] = true
		cur.upstream.Pool.Release(x)
	}
	if !seen[b.Address] {
		t.Errorf("the new pool does not pick the backend that came back: %v", seen)
	}

	// A request that started on the old config fails after the reload:
	// its report reaches the old, stopped monitor.
	old.monitor.ReportFailure(b, "connection refused")
	if !waitFor(5*time.Second, b.Up) {
		t.Fatal("a failure reported to a replaced monitor left the backend down")
	}
}

// queuedForSlot is how many goroutines wait in a pool's queue for a
// backend slot (read from their stacks: the queue keeps no count a test
// outside pkg/balancer can read).
func queuedForSlot() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "balancer.(*Pool).queue(")
}

const queueConfig = `
[global]
admin = ""
access_log = ""
[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "web"
[[pool]]
name = "web"
max_conns_per_backend = 1
connect_timeout = "10s"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "127.0.0.1:1"
`

// TestQueuedRequestWokenAcrossReload: with every slot held by requests
// of the old config, a request queued on the new config proceeds as soon
// as an old one ends, and one queued on the old config proceeds when a
// new one ends, rather than waiting out the queue timeout.
func TestQueuedRequestWokenAcrossReload(t *testing.T) {
	s := startServer(t, queueConfig)
	old := currentPool(s, "web").upstream
	held, err := old.Pool.Acquire(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A request of the old config waits for the slot.
	oldDone := make(chan error, 1)
	go func() {
		b, err := old.Pool.Acquire(nil, old.QueueTimeout)
		if err == nil {
			old.Pool.Release(b)
		}
		oldDone <- err
	}()
	if !waitFor(5*time.Second, func() bool { return queuedForSlot() == 1 }) {
		t.Fatal("the old config's request did not queue")
	}
	reload(t, s, queueConfig)
	cur := currentPool(s, "web").upstream
	if cur.Pool == old.Pool || cur.Pool.Backends[0].State != held.State {
		t.Fatal("the reload did not build a new pool sharing the backend's state")
	}
	newDone := make(chan time.Time, 1)
	var got error
	go func() {
		b, err := cur.Pool.Acquire(nil, cur.QueueTimeout)
		if err == nil {
			cur.Pool.Release(b)
		}
		got = err
		newDone <- time.Now()
	}()
	if !waitFor(5*time.Second, func() bool { return queuedForSlot() == 2 }) {
		t.Fatal("the new config's request did not queue")
	}
	// The old config's request ends: both queued requests get the slot
	// in turn, one releasing it to the other across the configs.
	released := time.Now()
	old.Pool.Release(held)
	select {
	case err := <-oldDone:
		if err != nil {
			t.Fatalf("the request queued on the old config: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the request queued on the old config was not woken")
	}
	select {
	case at := <-newDone:
		if got != nil {
			t.Fatalf("the request queued on the new config: %v", got)
		}
		if d := at.Sub(released); d > time.Second {
			t.Errorf("the request queued on the new config waited %s after the slot was freed", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the request queued on the new config was not woken when the old config's request ended")
	}
}

// TestReloadDuringHandshakes reloads a TLS listener, changing its
// read_timeout (which bounds handshakes), while clients complete
// handshakes. Under -race it checks that the handshake workers read the
// timeout safely while a reload writes it.
func TestReloadDuringHandshakes(t *testing.T) {
	dir := t.TempDir()
	pair, err := certgen.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := pair.Write(dir, "site")
	if err != nil {
		t.Fatal(err)
	}
	// A fixed port: a reload binds port 0 anew.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bind := free.Addr().String()
	free.Close()
	src := func(readTimeout string) string {
		return fmt.Sprintf(`
[global]
admin = ""
access_log = ""
[[listener]]
name = "https"
bind = %q
pool = "web"
read_timeout = %q
  [listener.tls]
  cert = %q
  key = %q
[[pool]]
name = "web"
  [pool.health]
  check = "none"
  [[pool.backend]]
  address = "127.0.0.1:1"
`, bind, readTimeout, cert, key)
	}
	s := startServer(t, src("5s"))
	addr := s.Addrs()["https"]

	stop := make(chan struct{})
	var handshakes atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
					&tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
				if err != nil {
					t.Errorf("handshake %d: %v", i, err)
					return
				}
				c.Close()
				handshakes.Inc()
			}
		}()
	}
	for i := range 20 {
		n := handshakes.Load()
		if !waitFor(5*time.Second, func() bool { return handshakes.Load() > n }) {
			t.Fatal("handshakes stopped")
		}
		// Alternate timeouts so that each reload writes a new one.
		reload(t, s, src(fmt.Sprintf("%ds", 5+i%2)))
	}
	close(stop)
	wg.Wait()
	t.Logf("%d handshakes across 20 reloads", handshakes.Load())
}
