package policy

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func TestFilter(t *testing.T) {
	f, err := NewFilter([]string{"10.0.0.0/8", "2001:db8::/32"}, []string{"10.6.6.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{
		"10.1.2.3":         true,
		"10.6.6.6":         false, // denied though allowed
		"::ffff:10.1.2.3":  true,
		"2001:db8::1":      true,
		"192.0.2.1":        false, // not in the allow list
		"2001:db9::1":      false,
		"::ffff:10.6.6.10": false,
	} {
		if got := f.Allows(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s: %v, want %v", a, got, want)
		}
	}
	if f.Allows(netip.Addr{}) {
		t.Error("an address that is not an IP passed an allow list")
	}
	deny, _ := NewFilter(nil, []string{"192.0.2.7"})
	if deny.AllowsAddr(&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}) || !deny.AllowsAddr(&net.TCPAddr{IP: net.ParseIP("192.0.2.8"), Port: 1}) {
		t.Error("deny list")
	}
	var none *Filter
	if !none.Allows(netip.MustParseAddr("192.0.2.1")) || !none.Empty() {
		t.Error("a nil filter refused")
	}
	if _, err := NewFilter([]string{"10.0.0.1/8"}, nil); err == nil {
		t.Error("a prefix with host bits was taken")
	}
}

func TestHeaderRules(t *testing.T) {
	r := NewHeaderRules(HeaderConfig{
		RequestSet:     map[string]string{"x-env": "prod", "X-Debug": "0"},
		RequestRemove:  []string{"X-Debug", "cookie2"},
		ResponseSet:    map[string]string{"X-Frame-Options": "DENY"},
		ResponseRemove: []string{"Server", "x-powered-by"},
	})
	var req fasthttp.RequestHeader
	if err := req.Read(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\nX-Debug: 1\r\nCookie2: x\r\nX-Env: test\r\n\r\n"))); err != nil {
		t.Fatal(err)
	}
	r.Request(&req)
	head := string(req.Header())
	for _, want := range []string{"X-Env: prod\r\n", "X-Debug: 0\r\n"} {
		if !strings.Contains(head, want) {
			t.Errorf("request head lacks %q:\n%s", want, head)
		}
	}
	if strings.Contains(head, "Cookie2") || strings.Contains(head, "test") || strings.Count(head, "X-Debug") != 1 {
		t.Errorf("request head:\n%s", head)
	}
	var resp fasthttp.ResponseHeader
	if err := resp.Read(bufio.NewReader(strings.NewReader("HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Powered-By: PHP\r\nContent-Length: 0\r\n\r\n"))); err != nil {
		t.Fatal(err)
	}
	resp.SetNoDefaultContentType(true)
	r.Response(&resp)
	got := string(resp.Header())
	if !strings.Contains(got, "X-Frame-Options: DENY\r\n") || strings.Contains(got, "nginx") || strings.Contains(got, "PHP") {
		t.Errorf("response head:\n%s", got)
	}
	allocs := testing.AllocsPerRun(100, func() {
		r.Request(&req)
		r.Response(&resp)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request", allocs)
	}
	var none *HeaderRules
	none.Request(&req)
	none.Response(&resp)
}

func TestStripPrefix(t *testing.T) {
	for _, tc := range []struct{ target, prefix, want string }{
		{"/api/v1/x?a=b", "/api/", "/v1/x?a=b"},
		{"/api/v1/x?a=b", "/api", "/v1/x?a=b"},
		{"/api", "/api", "/"},
		{"/api?x=1", "/api", "/?x=1"},
		{"/api/", "/api/", "/"},
	} {
		got, ok := StripPrefix(make([]byte, 0, 64), []byte(tc.target), tc.prefix)
		if !ok || string(got) != tc.want {
			t.Errorf("%s without %s: %q %v, want %q", tc.target, tc.prefix, got, ok, tc.want)
		}
	}
	if _, ok := StripPrefix(nil, []byte("/other"), "/api"); ok {
		t.Error("stripped a prefix the target does not have")
	}
	if got := string(Redirect(nil, "https://www.example.com", []byte("/a/b?c=d"))); got != "https://www.example.com/a/b?c=d" {
		t.Errorf("redirect: %s", got)
	}
}

// FuzzHeaderRule: a rule that the config's checks accept can add one
// field to a head, and nothing else: the head it writes reads back with
// the field's value and no field smuggled in.
func FuzzHeaderRule(f *testing.F) {
	f.Add("X-Frame-Options", "DENY")
	f.Add("X-A", "b\r\nX-Evil: 1")
	f.Add("Set-Cookie", "a=b; Path=/")
	f.Add("X:B", "c")
	f.Fuzz(func(t *testing.T, name, value string) {
		if edgeCheck(name, value) != nil {
			return
		}
		r := NewHeaderRules(HeaderConfig{ResponseSet: map[string]string{name: value}})
		var resp fasthttp.ResponseHeader
		resp.SetContentLength(0)
		r.Response(&resp)
		var back fasthttp.ResponseHeader
		if err := back.Read(bufio.NewReader(strings.NewReader(string(resp.Header())))); err != nil {
			t.Fatalf("%q: %q: the head does not read back: %v\n%q", name, value, err, resp.Header())
		}
		n := 0
		for range back.All() {
			n++
		}
		if n > 4 { // Content-Length, Content-Type, Date and the rule's
			t.Fatalf("%q: %q: %d fields:\n%q", name, value, n, resp.Header())
		}
	})
}
