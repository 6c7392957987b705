package httpcache

import (
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/cache"
)

func TestByteRange(t *testing.T) {
	for _, tc := range []struct {
		spec        string
		size        int64
		first, last int64
		ok          bool
	}{
		{"bytes=0-0", 10, 0, 0, true},
		{"bytes=2-", 10, 2, 9, true},
		{"bytes=2-99", 10, 2, 9, true},
		{"bytes=-3", 10, 7, 9, true},
		{"bytes=-30", 10, 0, 9, true},
		{" Bytes = 1-2 ", 10, 1, 2, true},
		{"bytes=10-", 10, -1, 0, true},
		{"bytes=-0", 10, -1, 0, true},
		{"bytes=-5", 0, -1, 0, true},
		{"bytes=3-2", 10, 0, 0, false},
		{"bytes=0-1,3-4", 10, 0, 0, false},
		{"items=0-1", 10, 0, 0, false},
		{"bytes=a-1", 10, 0, 0, false},
		{"bytes=0", 10, 0, 0, false},
		{"bytes=1234567890123456789-", 10, 0, 0, false},
	} {
		first, last, ok := byteRange([]byte(tc.spec), tc.size)
		if ok != tc.ok || ok && (first != tc.first || first >= 0 && last != tc.last) {
			t.Errorf("byteRange(%q, %d) = %d, %d, %v; want %d, %d, %v", tc.spec, tc.size, first, last, ok, tc.first, tc.last, tc.ok)
		}
	}
}

// entry is a stored 200 with the given ETag and Last-Modified ("" for
// none).
func entry(t *testing.T, etag, lastModified string) *cache.Entry {
	t.Helper()
	var req fasthttp.RequestHeader
	req.SetMethod("GET")
	var resp fasthttp.ResponseHeader
	resp.Set("Cache-Control", "max-age=60")
	if etag != "" {
		resp.Set("ETag", etag)
	}
	if lastModified != "" {
		resp.Set("Last-Modified", lastModified)
	}
	now := time.Now()
	f := cache.Evaluate(cache.ParseRequest(&req, false), &resp, now, cache.Options{})
	if !f.Storable {
		t.Fatalf("not storable: %s", f.Why)
	}
	return cache.NewEntry(&req, &resp, []byte("body"), f, now, now)
}

func TestNotModifiedAndIfRange(t *testing.T) {
	const mod = "Mon, 02 Jan 2006 15:04:05 GMT"
	strong, weak, dated := entry(t, `"a"`, mod), entry(t, `W/"a"`, ""), entry(t, "", mod)
	for _, tc := range []struct {
		name  string
		e     *cache.Entry
		field string
		value string
		want  bool
	}{
		{"matching tag", strong, "If-None-Match", `"x", "a"`, true},
		{"weak comparison", weak, "If-None-Match", `"a"`, true},
		{"star", strong, "If-None-Match", "*", true},
		{"other tag", strong, "If-None-Match", `"b"`, false},
		{"tag against no ETag", dated, "If-None-Match", "*", false},
		{"not modified since", dated, "If-Modified-Since", "Tue, 03 Jan 2006 15:04:05 GMT", true},
		{"modified since", dated, "If-Modified-Since", "Sun, 01 Jan 2006 15:04:05 GMT", false},
		{"bad date", dated, "If-Modified-Since", "yesterday", false},
		{"no condition", strong, "Accept", "*/*", false},
	} {
		var req fasthttp.RequestHeader
		req.Set(tc.field, tc.value)
		if got := notModified(&req, tc.e); got != tc.want {
			t.Errorf("notModified, %s: %v, want %v", tc.name, got, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		e    *cache.Entry
		v    string
		want bool
	}{
		{"strong tag", strong, `"a"`, true},
		{"weak tag never matches", weak, `W/"a"`, false},
		{"other tag", strong, `"b"`, false},
		{"date", dated, mod, true},
		{"other date", dated, "Tue, 03 Jan 2006 15:04:05 GMT", false},
		{"date against no Last-Modified", weak, mod, false},
	} {
		if got := ifRangeMatches([]byte(tc.v), tc.e); got != tc.want {
			t.Errorf("ifRangeMatches, %s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
