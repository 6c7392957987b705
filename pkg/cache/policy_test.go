package cache

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// httpFmt is an HTTP date (net/http.TimeFormat).
const httpFmt = "Mon, 02 Jan 2006 15:04:05 GMT"

func TestAge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name                   string
		date                   time.Time
		ageValue               time.Duration
		request, response, now time.Time
		want                   time.Duration
	}{
		{"fresh from the origin", t0, 0, t0, t0, t0.Add(10 * time.Second), 10 * time.Second},
		{"Age from an upstream cache", t0, 30 * time.Second, t0, t0, t0, 30 * time.Second},
		{"Date in the past (apparent age)", t0.Add(-20 * time.Second), 0, t0, t0, t0, 20 * time.Second},
		{"response delay added to Age", t0, 5 * time.Second, t0, t0.Add(2 * time.Second), t0.Add(2 * time.Second), 7 * time.Second},
		{"Date in the future counts as 0", t0.Add(time.Hour), 0, t0, t0, t0, 0},
		{"no Date", time.Time{}, 0, t0, t0, t0.Add(time.Second), time.Second},
	} {
		if got := Age(tc.date, tc.ageValue, tc.request, tc.response, tc.now); got != tc.want {
			t.Errorf("%s: age %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestEvaluate(t *testing.T) {
	now := time.Now()
	rc := RequestControl{Lookup: true, Store: true, MaxAge: -1, MaxStale: -1, MinFresh: -1}
	for _, tc := range []struct {
		name     string
		code     int
		hdr      []string
		o        Options
		storable bool
		lifetime time.Duration
	}{
		{"max-age", 200, []string{"Cache-Control", "max-age=60"}, Options{}, true, time.Minute},
		{"s-maxage wins", 200, []string{"Cache-Control", "max-age=10, s-maxage=30"}, Options{}, true, 30 * time.Second},
		{"quoted and upper case", 200, []string{"Cache-Control", `MAX-AGE="45"`}, Options{}, true, 45 * time.Second},
		{"invalid max-age is stale", 200, []string{"Cache-Control", "max-age=abc"}, Options{}, true, 0},
		{"huge max-age is capped", 200, []string{"Cache-Control", "max-age=99999999999999999999"}, Options{}, true, (1<<31 - 1) * time.Second},
		{"Expires minus Date", 200, []string{"Date", now.UTC().Format(httpFmt), "Expires", now.Add(90 * time.Second).UTC().Format(httpFmt)}, Options{}, true, 90 * time.Second},
		{"invalid Expires is stale", 200, []string{"Expires", "0"}, Options{}, true, 0},
		{"no-store", 200, []string{"Cache-Control", "max-age=60, no-store"}, Options{}, false, 0},
		{"private", 200, []string{"Cache-Control", "private, max-age=60"}, Options{}, false, 0},
		{"nothing explicit", 200, nil, Options{}, false, 0},
		{"heuristic without Last-Modified", 200, nil, Options{Heuristic: true}, false, 0},
		{"heuristic", 200, []string{"Date", now.UTC().Format(httpFmt), "Last-Modified", now.Add(-100 * time.Second).UTC().Format(httpFmt)}, Options{Heuristic: true}, true, 10 * time.Second},
		{"heuristic capped at a day", 200, []string{"Last-Modified", now.Add(-1000 * 24 * time.Hour).UTC().Format(httpFmt)}, Options{Heuristic: true}, true, 24 * time.Hour},
		{"heuristic not for 302", 302, []string{"Last-Modified", now.Add(-time.Hour).UTC().Format(httpFmt)}, Options{Heuristic: true}, false, 0},
		{"302 with max-age", 302, []string{"Cache-Control", "max-age=60"}, Options{}, true, time.Minute},
		{"503 with max-age", 503, []string{"Cache-Control", "max-age=60"}, Options{}, false, 0},
		{"304", 304, []string{"Cache-Control", "max-age=60"}, Options{}, false, 0},
		{"206", 206, []string{"Cache-Control", "max-age=60"}, Options{}, false, 0},
		{"Vary *", 200, []string{"Cache-Control", "max-age=60", "Vary", "*"}, Options{}, false, 0},
		{"no-cache alone: stored, always revalidated", 200, []string{"Cache-Control", "no-cache", "ETag", `"x"`}, Options{}, true, 0},
	} {
		var h fasthttp.ResponseHeader
		h.SetStatusCode(tc.code)
		for i := 0; i+1 < len(tc.hdr); i += 2 {
			h.Set(tc.hdr[i], tc.hdr[i+1])
		}
		f := Evaluate(rc, &h, now, tc.o)
		if f.Storable != tc.storable || (tc.storable && (f.Lifetime-tc.lifetime).Abs() > time.Second) {
			t.Errorf("%s: storable %v (%s), lifetime %s; want %v, %s", tc.name, f.Storable, f.Why, f.Lifetime, tc.storable, tc.lifetime)
		}
	}
}

func TestParseRequest(t *testing.T) {
	for _, tc := range []struct {
		method, cc, pragma string
		ignore             bool
		lookup, revalidate bool
		maxStale           int64
	}{
		{"GET", "", "", false, true, false, -1},
		{"POST", "", "", false, false, false, -1},
		{"GET", "no-store", "", false, false, false, -1},
		{"GET", "no-cache", "", false, true, true, -1},
		{"GET", "max-age=0", "", false, true, true, -1},
		{"GET", "", "no-cache", false, true, true, -1},
		{"GET", "no-cache", "", true, true, false, -1},
		{"GET", "max-stale", "", false, true, false, 1 << 62},
		{"GET", "max-stale=30", "", false, true, false, 30},
	} {
		var h fasthttp.RequestHeader
		h.SetMethod(tc.method)
		if tc.cc != "" {
			h.Set("Cache-Control", tc.cc)
		}
		if tc.pragma != "" {
			h.Set("Pragma", tc.pragma)
		}
		rc := ParseRequest(&h, tc.ignore)
		if rc.Lookup != tc.lookup || rc.Revalidate != tc.revalidate || rc.MaxStale != tc.maxStale {
			t.Errorf("%s cc=%q pragma=%q ignore=%v: %+v", tc.method, tc.cc, tc.pragma, tc.ignore, rc)
		}
	}
}

func TestKeys(t *testing.T) {
	for _, tc := range []struct {
		host, uri string
		tls       bool
		purge     string
	}{
		{"www.example.com", "/a?b=1", true, "https://www.example.com/a?b=1"},
		{"WWW.Example.COM:443", "/a?b=1", true, "https://www.example.com/a?b=1"},
		{"www.example.com:443", "/a?b=1", true, "www.example.com/a?b=1"},
		{"www.example.com:80", "/", false, "http://www.example.com/"},
		{"www.example.com", "/", false, "https://www.example.com/"},
		{"www.example.com", "/", true, "http://www.example.com:80/"},
		{"www.example.com", "/", false, "www.example.com:443/"},
		{"www.example.com:8443", "/", true, "https://www.example.com:8443/"},
	} {
		k := Key(nil, []byte(tc.host), []byte(tc.uri), tc.tls)
		keys, err := KeysOf(tc.purge)
		if err != nil || (string(k) != string(keys[0]) && string(k) != string(keys[1])) {
			t.Errorf("%s%s (tls %v): key %q, purge %q gives %q %v", tc.host, tc.uri, tc.tls, k, tc.purge, keys, err)
		}
	}
	if k := Key(nil, []byte("www.example.com:80"), []byte("/"), true); string(k) != "https www.example.com:80 /" {
		t.Errorf("port 80 on TLS dropped: %q", k)
	}
	// One pool may serve a plaintext and a TLS listener: a page built for
	// one (redirects, absolute links) must not answer the other.
	if h, s := Key(nil, []byte("a"), []byte("/"), false), Key(nil, []byte("a"), []byte("/"), true); string(h) == string(s) {
		t.Errorf("http and https share the key %q", h)
	}
	if _, err := KeysOf("https://"); err == nil {
		t.Error("an empty URL made a key")
	}
}

func TestPurgeURLRemovesBothSchemes(t *testing.T) {
	c := New(1<<20, 1<<10, Options{})
	var req fasthttp.RequestHeader
	var resp fasthttp.ResponseHeader
	resp.Set("Cache-Control", "max-age=60")
	f := Evaluate(RequestControl{Store: true}, &resp, time.Now(), Options{})
	for _, tls := range []bool{false, true} {
		c.Put(Key(nil, []byte("www.example.com"), []byte("/p"), tls), NewEntry(&req, &resp, []byte("x"), f, time.Now(), time.Now()))
	}
	if n, err := c.PurgeURL("https://www.example.com/p"); n != 2 || err != nil {
		t.Errorf("purge: %d %v, want both schemes' entries", n, err)
	}
	if n := c.Stats().Objects; n != 0 {
		t.Errorf("%d objects left", n)
	}
}

func TestHTTPDates(t *testing.T) {
	want := time.Date(2050, 8, 18, 2, 1, 18, 0, time.UTC)
	for _, tc := range []struct {
		v  string
		ok bool
	}{
		{"Thu, 18 Aug 2050 02:01:18 GMT", true},
		{"THU, 18 AUG 2050 02:01:18 gmt", true},
		{"Thursday, 18-Aug-50 02:01:18 GMT", true},
		{"Thu Aug 18 02:01:18 2050", true},
		{"Thu, 18 Aug 2050 02:01:18 UTC", false},
		{"Thu, 18 Aug 2050 02:01:18 AEST", false},
		{"Thu, 18 Aug 50 02:01:18 GMT", false},
		{"Thu 18 Aug 2050 02:01:18 GMT", false},
		{"Thu, 18  Aug  2050 02:01:18 GMT", false},
		{"Thu, 18-Aug-2050 02:01:18 GMT", false},
		{"Thu, 18 Aug 2050 02.01.18 GMT", false},
		{"Thu, 18 Aug 2050 2:01:18 GMT", false},
		{"0", false},
	} {
		got, ok := parseHTTPDate([]byte(tc.v))
		if ok != tc.ok || (ok && !got.Equal(want)) {
			t.Errorf("%q: %v %v, want ok=%v", tc.v, got, ok, tc.ok)
		}
	}
	if got, ok := parseHTTPDate([]byte("Sun Nov  6 08:49:37 1994")); !ok || got.Day() != 6 {
		t.Errorf("asctime with a one-digit day: %v %v", got, ok)
	}
}

func TestAgeValue(t *testing.T) {
	for v, want := range map[string]time.Duration{"7200": 2 * time.Hour, "7200, 0": 2 * time.Hour, "0, 7200": 0, "": 0, "x": 0, "-5": 0} {
		if got := ageValue([]byte(v)); got != want {
			t.Errorf("Age %q: %s, want %s", v, got, want)
		}
	}
}

func TestEvaluateExpiresLines(t *testing.T) {
	now := time.Now()
	var h fasthttp.ResponseHeader
	h.Set("Date", now.UTC().Format(httpFmt))
	h.Add("Expires", now.Add(time.Hour).UTC().Format(httpFmt))
	h.Add("Expires", now.Add(2*time.Hour).UTC().Format(httpFmt))
	f := Evaluate(RequestControl{Store: true}, &h, now, Options{})
	if !f.Storable || f.Lifetime != 0 {
		t.Errorf("two Expires lines: %+v, want stored already stale", f)
	}
}

func TestRefreshedTakesDateAndFieldsFrom304(t *testing.T) {
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	var req fasthttp.RequestHeader
	var h fasthttp.ResponseHeader
	h.Set("Cache-Control", "max-age=2")
	h.Set("ETag", `"a"`)
	h.Set("Test-Header", "A")
	SetDate(&h, t0)
	rc := RequestControl{Store: true}
	e := NewEntry(&req, &h, []byte("body"), Evaluate(rc, &h, t0, Options{}), t0, t0)
	var nm fasthttp.ResponseHeader
	nm.SetStatusCode(304)
	nm.Set("Test-Header", "B")
	nm.Set("Cache-Control", "max-age=2")
	now := time.Now()
	SetDate(&nm, now)
	n := e.Refreshed(&nm, rc, Options{}, now, now)
	if string(n.Header.Peek("Test-Header")) != "B" || n.Staleness(now) > 0 || n.Header.StatusCode() != 200 || string(n.Body) != "body" {
		t.Errorf("refreshed: Test-Header %q, staleness %s, status %d, body %q", n.Header.Peek("Test-Header"), n.Staleness(now), n.Header.StatusCode(), n.Body)
	}
	if d := string(n.Header.Peek("Date")); d != now.UTC().Format(httpFmt) {
		t.Errorf("refreshed Date %q, want the 304's", d)
	}
}

func TestEvaluateMustUnderstand(t *testing.T) {
	for code, storable := range map[int]bool{200: true, 299: false} {
		var h fasthttp.ResponseHeader
		h.SetStatusCode(code)
		h.Set("Cache-Control", "max-age=60, no-store, must-understand")
		if f := Evaluate(RequestControl{Store: true}, &h, time.Now(), Options{}); f.Storable != storable {
			t.Errorf("%d with must-understand: %+v", code, f)
		}
	}
}

// TestVaryMatchAllocatesNothing: matching a variant runs on every hit.
func TestVaryMatchAllocatesNothing(t *testing.T) {
	var req fasthttp.RequestHeader
	req.Add("Accept-Language", "en, de")
	req.Add("Foo", "1")
	req.Add("Foo", "2")
	var h fasthttp.ResponseHeader
	h.Set("Vary", "Accept-Language, Foo")
	e := NewEntry(&req, &h, nil, Freshness{Storable: true}, time.Now(), time.Now())
	var hit fasthttp.RequestHeader
	hit.Add("Accept-Language", "DE,en")
	hit.Add("Foo", "1, 2")
	if !e.Matches(&hit) {
		t.Fatal("no match")
	}
	if n := testing.AllocsPerRun(100, func() { e.Matches(&hit) }); n != 0 {
		t.Errorf("Matches allocates %v times", n)
	}
}
