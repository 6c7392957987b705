package affinity

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/balancer"
)

func backends(addrs ...string) []*balancer.Backend {
	bs := make([]*balancer.Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = &balancer.Backend{Address: a, Weight: 1, Index: i}
	}
	return bs
}

// request is the head of a request with that Cookie field, read as the
// server reads one.
func request(cookie string) *fasthttp.RequestHeader {
	raw := "GET /a?b=c HTTP/1.1\r\nHost: www.example.com\r\n"
	if cookie != "" {
		raw += "Cookie: " + cookie + "\r\n"
	}
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(raw + "\r\n"))); err != nil {
		panic(err)
	}
	return &h
}

func TestStickyTokens(t *testing.T) {
	bs := backends("10.0.0.1:8080", "10.0.0.2:8080")
	secret := []byte("0123456789abcdef0123456789abcdef")
	s := NewSticky(StickyConfig{Cookie: "lb_srv", HTTPOnly: true, SameSite: "lax"}, "web", bs, secret, nil)
	tok := s.TokenOf(1)
	forged := tok[:21] + "A"
	if forged == tok {
		forged = tok[:21] + "B"
	}
	if strings.Contains(tok, "10.0.0") || len(tok) != 22 {
		t.Fatalf("token %q: want 22 characters that do not give the address away", tok)
	}
	// Another lb with the same secret makes the same tokens; another
	// secret or pool, other ones.
	if Token(secret, "web", "10.0.0.2:8080") != tok {
		t.Error("the same secret, pool and address made another token")
	}
	if Token([]byte("another secret, 32 bytes long...."), "web", "10.0.0.2:8080") == tok || Token(secret, "api", "10.0.0.2:8080") == tok {
		t.Error("another secret or pool made the same token")
	}
	for _, tc := range []struct {
		cookie string
		want   int
	}{
		{"", -1},
		{"lb_srv=" + tok, 1},
		{"session=abc; lb_srv=" + s.TokenOf(0) + "; theme=dark", 0},
		{"lb_srv=" + forged, -1},     // forged: one character changed
		{"lb_srv=10.0.0.2:8080", -1}, // an address is no token
		{"other=" + tok, -1},
	} {
		if got := s.Backend(request(tc.cookie)); got != tc.want {
			t.Errorf("cookie %q: backend %d, want %d", tc.cookie, got, tc.want)
		}
	}
}

func TestStickySetCookie(t *testing.T) {
	bs := backends("a:1", "b:1")
	secret := []byte("0123456789abcdef")
	no := false
	for _, tc := range []struct {
		cfg       StickyConfig
		tls       bool
		want, not []string
	}{
		{StickyConfig{Cookie: "lb_srv", HTTPOnly: true, SameSite: "lax"}, true,
			[]string{"lb_srv=", "Path=/", "HttpOnly", "Secure", "SameSite=Lax"}, []string{"Max-Age", "Domain"}},
		{StickyConfig{Cookie: "lb_srv", HTTPOnly: true, SameSite: "lax"}, false,
			[]string{"HttpOnly"}, []string{"Secure"}},
		{StickyConfig{Cookie: "srv", SameSite: "strict", MaxAge: time.Hour, Domain: "example.com", Path: "/app", Secure: &no}, true,
			[]string{"srv=", "Max-Age=3600", "Domain=example.com", "Path=/app", "SameSite=Strict"}, []string{"Secure", "HttpOnly"}},
	} {
		s := NewSticky(tc.cfg, "web", bs, secret, nil)
		var resp fasthttp.Response
		s.Set(&resp.Header, 1, tc.tls, false)
		got := string(resp.Header.Peek("Set-Cookie"))
		if got == "" {
			got = resp.Header.String()
		}
		if !strings.Contains(got, tc.cfg.Cookie+"="+s.TokenOf(1)) {
			t.Errorf("Set-Cookie %q does not carry backend 1's token", got)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("Set-Cookie %q lacks %q", got, w)
			}
		}
		for _, n := range tc.not {
			if strings.Contains(got, n) {
				t.Errorf("Set-Cookie %q has %q", got, n)
			}
		}
	}
}

func TestStickyAllocatesNothing(t *testing.T) {
	s := NewSticky(StickyConfig{Cookie: "lb_srv", HTTPOnly: true, SameSite: "lax"}, "web", backends("a:1", "b:1"), []byte("0123456789abcdef"), nil)
	h := request("session=abc; lb_srv=" + s.TokenOf(1))
	var resp fasthttp.Response
	got := testing.AllocsPerRun(100, func() {
		if s.Backend(h) != 1 {
			t.Fatal("lost the backend")
		}
		resp.Header.Reset()
		s.Set(&resp.Header, 0, true, true)
	})
	if got != 0 {
		t.Errorf("%v allocations per sticky request", got)
	}
}

func TestKeys(t *testing.T) {
	client := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 5555}
	other := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 6666}
	mapped := &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}
	h := request("user=alice")
	h.Set("X-Tenant", "acme")
	ip, ok := NewKey("client_ip", "").Of(h, client)
	if !ok {
		t.Fatal("no client_ip key")
	}
	if k, _ := NewKey("client_ip", "").Of(h, other); k != ip {
		t.Error("the client's port changed its key")
	}
	if k, _ := NewKey("client_ip", "").Of(h, mapped); k != ip {
		t.Error("an IPv4-mapped address has another key than the IPv4 one")
	}
	for _, tc := range []struct {
		kind, name string
		ok         bool
	}{
		{"uri", "", true},
		{"header", "X-Tenant", true},
		{"header", "x-tenant", true},
		{"header", "X-Missing", false},
		{"cookie", "user", true},
		{"cookie", "missing", false},
	} {
		k := NewKey(tc.kind, tc.name)
		if _, ok := k.Of(h, client); ok != tc.ok {
			t.Errorf("%s: key %v, want %v", k, ok, tc.ok)
		}
	}
	a, _ := NewKey("header", "X-Tenant").Of(h, client)
	h.Set("X-Tenant", "globex")
	if b, _ := NewKey("header", "X-Tenant").Of(h, client); a == b {
		t.Error("two tenants have the same key")
	}
}

// TestCookieLeavesTheHeadAlone: reading a cookie does not change the
// Cookie fields the backend gets.
func TestCookieLeavesTheHeadAlone(t *testing.T) {
	var h fasthttp.RequestHeader
	raw := "GET / HTTP/1.1\r\nHost: a\r\nCookie: sess=\"a\\054b\"; pref=dark\r\nCookie: x=\"quoted\"; lb_srv=tok; =odd\r\n\r\n"
	if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"lb_srv": "tok", "pref": "dark", "sess": `"a\054b"`, "x": `"quoted"`, "none": ""} {
		if got := string(Cookie(&h, name)); got != want {
			t.Errorf("cookie %s: %q, want %q", name, got, want)
		}
	}
	s := NewSticky(StickyConfig{Cookie: "lb_srv"}, "web", backends("a:1"), []byte("0123456789abcdef"), nil)
	s.Backend(&h)
	NewKey("cookie", "sess").Of(&h, nil)
	if got := string(h.Header()); !strings.Contains(got, "Cookie: sess=\"a\\054b\"; pref=dark\r\nCookie: x=\"quoted\"; lb_srv=tok; =odd\r\n") {
		t.Errorf("the head after reading cookies:\n%s", got)
	}
}
