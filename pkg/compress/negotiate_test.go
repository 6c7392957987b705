package compress

import (
	"testing"
)

// asciiUpper upper-cases s's ASCII letters alone (names and q are
// ASCII; strings.ToUpper would turn some other letters into them).
func asciiUpper(s string) []byte {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return b
}

var allPrefs = []Encoding{Zstd, Brotli, Gzip}

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		name, accept string
		prefs        []Encoding
		want         Encoding
	}{
		{"absent", "", allPrefs, Identity},
		{"blank", "  ", allPrefs, Identity},
		{"gzip only", "gzip", allPrefs, Gzip},
		{"server order among equals", "gzip, deflate, br, zstd", allPrefs, Zstd},
		{"server order, br before gzip", "gzip, br", allPrefs, Brotli},
		{"server prefers gzip", "gzip, br, zstd", []Encoding{Gzip, Brotli}, Gzip},
		{"highest q wins over server order", "zstd;q=0.5, gzip;q=0.8, br;q=0.7", allPrefs, Gzip},
		{"q=0 refuses", "zstd;q=0, br;q=0, gzip", allPrefs, Gzip},
		{"q=0.000 refuses", "gzip;q=0.000", allPrefs, Identity},
		{"all refused", "gzip;q=0, br;q=0", []Encoding{Gzip, Brotli}, Identity},
		{"not offered", "deflate, compress", allPrefs, Identity},
		{"star", "*", allPrefs, Zstd},
		{"star after a refusal", "zstd;q=0, *", allPrefs, Brotli},
		{"star refused, gzip named", "*;q=0, gzip", allPrefs, Gzip},
		{"star refused alone", "*;q=0", allPrefs, Identity},
		{"named beats star", "*;q=0.1, br;q=0.2", allPrefs, Brotli},
		{"identity weighed higher", "gzip;q=0.5, identity", allPrefs, Identity},
		{"identity through star higher", "gzip;q=0.5, *", []Encoding{Gzip}, Identity},
		{"identity tied: compressed", "gzip, identity", allPrefs, Gzip},
		{"identity refused", "identity;q=0, gzip;q=0.1", allPrefs, Gzip},
		{"identity alone", "identity", allPrefs, Identity},
		{"case and spaces", " GZip ;  Q=1 ,\tBR ; q=0.9 ", []Encoding{Gzip, Brotli}, Gzip},
		{"x-gzip", "x-gzip", allPrefs, Gzip},
		{"first of a duplicate counts", "br;q=0, br", allPrefs, Identity},
		{"malformed q ignores the element", "br;q=2, gzip;q=0.5", allPrefs, Gzip},
		{"malformed q, four decimals", "br;q=0.0001, gzip;q=0.5", allPrefs, Gzip},
		{"malformed q, letters", "br;q=high, gzip", allPrefs, Gzip},
		{"q=1.000", "br;q=1.000", allPrefs, Brotli},
		{"other parameters", "br;level=3;q=0.4, gzip;q=0.3", allPrefs, Brotli},
		{"empty elements", ",,gzip,,", allPrefs, Gzip},
		{"no prefs", "gzip, br", nil, Identity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Negotiate([]byte(tc.accept), tc.prefs); got != tc.want {
				t.Errorf("Negotiate(%q, %v) = %v, want %v", tc.accept, tc.prefs, got, tc.want)
			}
		})
	}
}

func TestNegotiateFields(t *testing.T) {
	for _, tc := range []struct {
		fields []string
		want   Encoding
	}{
		{nil, Identity},
		{[]string{""}, Identity},
		{[]string{"gzip", "br"}, Brotli},
		{[]string{"br;q=0", "gzip"}, Gzip},
		{[]string{"br;q=0.5", "", "gzip;q=0.6"}, Gzip},
	} {
		var fields [][]byte
		for _, f := range tc.fields {
			fields = append(fields, []byte(f))
		}
		if got := NegotiateFields(fields, allPrefs); got != tc.want {
			t.Errorf("NegotiateFields(%q) = %v, want %v", tc.fields, got, tc.want)
		}
	}
}

func TestNegotiateAllocatesNothing(t *testing.T) {
	accept := []byte("gzip;q=0.8, deflate, br;q=0.9, zstd;q=0.95, identity;q=0.1, *;q=0")
	if n := testing.AllocsPerRun(100, func() { Negotiate(accept, allPrefs) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

func TestParseEncoding(t *testing.T) {
	for _, e := range allPrefs {
		if got, ok := ParseEncoding(e.String()); !ok || got != e {
			t.Errorf("ParseEncoding(%q) = %v, %v", e, got, ok)
		}
	}
	if _, ok := ParseEncoding("identity"); ok {
		t.Error("identity parsed as a compression")
	}
}

// FuzzAcceptEncoding checks that any Accept-Encoding gives a coding the
// server offers or Identity, never one the field refuses, and the same
// answer for the field's upper-cased form.
func FuzzAcceptEncoding(f *testing.F) {
	for _, s := range []string{"", "gzip", "gzip, br;q=0.9, zstd;q=0", "*;q=0, identity", "br;q=1.000, x-gzip;q=0.5",
		"gzip;q=", "gzip;q=1.", ";q=0.5", "zstd;;q=0.2,,", "\tBR\t;\tQ=0.001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, accept string) {
		prefs := []Encoding{Gzip, Zstd}
		got := Negotiate([]byte(accept), prefs)
		if got != Identity && got != Gzip && got != Zstd {
			t.Fatalf("%q: %v is not offered", accept, got)
		}
		if got != Identity {
			a := parseAccept([]byte(accept))
			q := a.q[got]
			if q == qUnset {
				q = a.star
			}
			if q <= 0 {
				t.Fatalf("%q: chose %v, which it weighs %d", accept, got, q)
			}
		}
		if up := Negotiate(asciiUpper(accept), prefs); up != got {
			t.Fatalf("%q: %v, but %v upper-cased", accept, got, up)
		}
	})
}
