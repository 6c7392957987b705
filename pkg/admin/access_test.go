package admin

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/internal/testutil"
)

// TestRebindingRefused is a DNS-rebinding attack: a page on evil.example
// whose name now resolves to the admin address posts to it, so Host and
// Origin are both evil.example, and a check that compares Origin with
// Host sees nothing wrong.
func TestRebindingRefused(t *testing.T) {
	src := &fakeSource{drained: map[string]bool{}}
	base := start(t, src, Options{})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	evil := "evil.example:" + port
	for _, path := range []string{"/reload", "/pools/web/backends/10.0.0.1:80/drain", "/pools/web/cache/purge"} {
		code, _ := doHost(t, "POST", base+path, evil, "Origin", "http://"+evil, "Sec-Fetch-Site", "same-origin")
		if code != http.StatusForbidden {
			t.Errorf("POST %s with Host and Origin %s: %d, want 403", path, evil, code)
		}
	}
	if src.drained["10.0.0.1:80"] {
		t.Fatal("a rebound name drained a backend")
	}
	// Reading the status through a rebound name would show every
	// backend's address to the attacker's page.
	if code, _ := doHost(t, "GET", base+"/status.json", evil); code != http.StatusForbidden {
		t.Errorf("GET /status.json with Host %s: %d, want 403", evil, code)
	}
	// Container health checks and Prometheus ask by whatever name they know.
	for _, path := range []string{"/healthz", "/metrics"} {
		if code, _ := doHost(t, "GET", base+path, evil); code == http.StatusForbidden {
			t.Errorf("GET %s with Host %s: 403, want it open", path, evil)
		}
	}
}

func TestHostsAccepted(t *testing.T) {
	src := &fakeSource{drained: map[string]bool{}}
	s, err := New("127.0.0.1:0", src, Options{Hosts: []string{"lb.internal", "*.ops.example"}}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Close)
	base := "http://" + s.Addr()
	_, port, _ := net.SplitHostPort(s.Addr())
	for _, tc := range []struct {
		host string
		code int
	}{
		{s.Addr(), 200}, // the admin address itself
		{"127.0.0.1", 200},
		{"localhost:" + port, 200},
		{"LOCALHOST.:" + port, 200},
		{"status.localhost:" + port, 200},
		{"[::1]:" + port, 200},
		{"10.1.2.3:" + port, 200}, // an address cannot be rebound
		{"lb.internal:" + port, 200},
		{"LB.Internal", 200},
		{"a.ops.example:" + port, 200},
		{"ops.example:" + port, 403},
		{"lb.internal.evil.example:" + port, 403},
		{"localhost.evil.example:" + port, 403},
		{"evil.example", 403},
	} {
		if code, _ := doHost(t, "POST", base+"/reload", tc.host); code != tc.code {
			t.Errorf("POST /reload with Host %q: %d, want %d", tc.host, code, tc.code)
		}
	}
}

func TestBindNameAccepted(t *testing.T) {
	s, err := New("localhost:0", &fakeSource{}, Options{}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Close)
	if !s.hostAllowed("localhost") {
		t.Error("the bind name localhost is refused")
	}
	s2, err := New("127.0.0.1:0", &fakeSource{}, Options{}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s2.bindHost = "lb-admin.example" // as if admin = "lb-admin.example:9100"
	if !s2.hostAllowed("lb-admin.example:9100") || s2.hostAllowed("other.example:9100") {
		t.Error("the bind name is not what decides")
	}
}

func TestToken(t *testing.T) {
	const token = "Zm9vYmFyLXRva2VuLTAxMjM0NTY3ODk="
	var logs testutil.SyncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Trace})
	src := &fakeSource{drained: map[string]bool{}}
	s, err := New("127.0.0.1:0", src, Options{Token: token}, log)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Close)
	base := "http://" + s.Addr()
	drain := base + "/pools/web/backends/10.0.0.1:80/drain"

	for _, tc := range []struct {
		name, method, url string
		hdr               []string
		code              int
	}{
		{"no token", "POST", drain, nil, 401},
		{"wrong token", "POST", drain, []string{"Authorization", "Bearer " + token[:len(token)-1] + "x"}, 401},
		{"token prefix", "POST", drain, []string{"Authorization", "Bearer " + token[:8]}, 401},
		{"basic scheme", "POST", drain, []string{"Authorization", "Basic " + token}, 401},
		{"right token", "POST", drain, []string{"Authorization", "Bearer " + token}, 200},
		{"lower-case scheme", "POST", base + "/reload", []string{"Authorization", "bearer " + token}, 200},
		{"reload without", "POST", base + "/reload", nil, 401},
		{"purge without", "POST", base + "/pools/web/cache/purge", nil, 401},
		// The token lets a script use any name: a rebound page cannot know it.
		{"any Host with the token", "POST", base + "/reload", []string{"Host", "lb.example", "Authorization", "Bearer " + token}, 200},
		{"reads stay open", "GET", base + "/status.json", nil, 200},
		{"healthz stays open", "GET", base + "/healthz", nil, 200},
		{"pprof needs it", "GET", base + "/debug/pprof/", nil, 401},
	} {
		code, _ := doHost(t, tc.method, tc.url, "", tc.hdr...)
		if code != tc.code {
			t.Errorf("%s: %s %s: %d, want %d", tc.name, tc.method, tc.url, code, tc.code)
		}
	}
	if code, _ := doHost(t, "POST", drain, ""); code == 401 {
		resp, _ := http.Post(drain, "", nil)
		if resp != nil {
			resp.Body.Close()
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer: %q", resp.Header.Get("WWW-Authenticate"))
			}
		}
	}

	// A new token on reload: the old one stops working at once.
	s.SetAccess(token+"-2", nil)
	if code, _ := doHost(t, "POST", base+"/reload", "", "Authorization", "Bearer "+token); code != 401 {
		t.Errorf("the old token after SetAccess: %d, want 401", code)
	}
	if code, _ := doHost(t, "POST", base+"/reload", "", "Authorization", "Bearer "+token+"-2"); code != 200 {
		t.Errorf("the new token after SetAccess: %d, want 200", code)
	}
	s.SetAccess("", nil)
	if code, _ := doHost(t, "POST", base+"/reload", ""); code != 200 {
		t.Errorf("no token after SetAccess: %d, want 200", code)
	}

	out := logs.String()
	if !strings.Contains(out, "admin request refused") {
		t.Errorf("refusals not logged:\n%s", out)
	}
	if strings.Contains(out, token[:12]) {
		t.Errorf("the token shows in the log:\n%s", out)
	}
}

// doHost is do with the Host header set to host ("" keeps the URL's).
func doHost(t *testing.T, method, url, host string, hdr ...string) (int, string) {
	t.Helper()
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			host = hdr[i+1]
		}
	}
	req, _ := http.NewRequest(method, url, nil)
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] != "Host" {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}
