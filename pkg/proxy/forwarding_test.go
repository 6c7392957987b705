package proxy

import (
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/offloadlb/lb/internal/testutil"
	"github.com/offloadlb/lb/pkg/h2"
)

// forgedForwarding are forwarding headers a client may send to make a
// backend build its links for another origin: duplicates (a backend may
// read the last copy), every spelling with underscores (CGI-style
// backends read them as the same variable), and the headers lb has no
// word in. Name, value pairs.
var forgedForwarding = []string{
	"X-Forwarded-For", "10.0.0.1",
	"X_Forwarded_For", "203.0.113.66",
	"X-Forwarded-Host", "evil.example",
	"X-Forwarded-Host", "evil2.example",
	"X_Forwarded_Host", "evil3.example",
	"X-Forwarded-Proto", "https",
	"X-Forwarded-Proto", "gopher",
	"x-forwarded_proto", "ftp",
	"X-Forwarded-Port", "666",
	"X-Forwarded-Port", "667",
	"X-Forwarded-Prefix", "/evil",
	"X_Forwarded_Prefix", "/evil2",
	"X-Forwarded-Ssl", "on",
	"X-Forwarded-Scheme", "https",
	"X-Real-IP", "203.0.113.5",
	"X-Real-Ip", "203.0.113.6",
	"X_Real_IP", "203.0.113.7",
	"Forwarded", "for=203.0.113.8;host=evil.example;proto=https",
	"Forwarded", "host=evil4.example",
}

// forwardingSeen collects the values a backend got for every forwarding
// header, by name in lower case with hyphens, whatever the spelling.
func forwardingSeen(h http.Header) map[string][]string {
	got := map[string][]string{}
	for k, vs := range h {
		n := strings.ReplaceAll(strings.ToLower(k), "_", "-")
		if n != "forwarded" && n != "x-real-ip" && !strings.HasPrefix(n, "x-forwarded-") {
			continue
		}
		got[n] = append(got[n], vs...)
		sort.Strings(got[n])
	}
	return got
}

// TestForgedForwardingHeadersNeverReachBackend sends every forwarding
// header twice and in its other spellings, over HTTP/1.1 and HTTP/2: the
// backend must see exactly lb's values, once each, and X-Forwarded-For
// must be the client's list with the client's address appended.
func TestForgedForwardingHeadersNeverReachBackend(t *testing.T) {
	e := startEcho(t)

	t.Run("HTTP/1.1", func(t *testing.T) {
		hs := newHarness(t, harnessOpts{backends: []string{e.addr}})
		req := "GET /x HTTP/1.1\r\nHost: shop.example.com:8443\r\n"
		for i := 0; i+1 < len(forgedForwarding); i += 2 {
			req += forgedForwarding[i] + ": " + forgedForwarding[i+1] + "\r\n"
		}
		resp := hs.raw(req + "Connection: close\r\n\r\n")
		if !strings.HasPrefix(resp, "HTTP/1.1 200") {
			t.Fatalf("response: %q", resp)
		}
		want := map[string][]string{
			"x-forwarded-for":   {"10.0.0.1, 192.0.2.7"},
			"x-forwarded-proto": {"http"},
			"x-forwarded-host":  {"shop.example.com:8443"},
			"x-forwarded-port":  {"8443"},
			"x-real-ip":         {"192.0.2.7"},
			"forwarded":         {`for=192.0.2.7;host="shop.example.com:8443";proto=http`},
		}
		if got := forwardingSeen(e.lastSeen().Header); !reflect.DeepEqual(got, want) {
			t.Errorf("backend got forwarding headers\n%v\nwant\n%v", got, want)
		}
	})

	t.Run("HTTP/2", func(t *testing.T) {
		hs := newHarness(t, harnessOpts{backends: []string{e.addr}, tls: true})
		addr, _ := h2Serve(t, hs, h2.Options{})
		r := testutil.DialH2(t, addr)
		fields := make([]string, len(forgedForwarding))
		for i, f := range forgedForwarding {
			if i%2 == 0 {
				f = strings.ToLower(f) // HTTP/2 field names are lower case
			}
			fields[i] = f
		}
		r.Request(1, "GET", "/x", true, fields...)
		resp := r.Response(1, nil)
		if resp.Status != "200" {
			t.Fatalf("status %q, reset %v", resp.Status, resp.Reset)
		}
		var s seen
		if err := json.Unmarshal(resp.Body, &s); err != nil {
			t.Fatal(err)
		}
		want := map[string][]string{
			"x-forwarded-for":   {"10.0.0.1, 127.0.0.1"},
			"x-forwarded-proto": {"https"},
			"x-forwarded-host":  {"lb.test"},
			"x-forwarded-port":  {"443"},
			"x-real-ip":         {"127.0.0.1"},
			"forwarded":         {"for=127.0.0.1;host=lb.test;proto=https"},
		}
		if got := forwardingSeen(s.Header); !reflect.DeepEqual(got, want) {
			t.Errorf("backend got forwarding headers\n%v\nwant\n%v", got, want)
		}
	})
}
