package edge

import (
	"strings"
	"testing"
)

func TestParsePrefix(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{" 192.0.2.7 ", "192.0.2.7/32", ""},
		{"2001:db8::/32", "2001:db8::/32", ""},
		{"::ffff:192.0.2.0/120", "192.0.2.0/24", ""},
		{"::ffff:192.0.2.7", "192.0.2.7/32", ""},
		{"10.0.0.1/8", "", "did you mean 10.0.0.0/8"},
		{"10.0.0.0/33", "", "not a CIDR prefix"},
		{"example.com", "", "not an address"},
		{"", "", "not an address"},
	} {
		p, err := ParsePrefix(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error with %q", tc.in, err, tc.err)
			}
		case err != nil || p.String() != tc.want:
			t.Errorf("%q: %v %v, want %s", tc.in, p, err, tc.want)
		}
	}
}

func TestCheckRuleField(t *testing.T) {
	for _, tc := range []struct {
		name    string
		request bool
		ok      bool
	}{
		{"X-Env", true, true},
		{"Strict-Transport-Security", false, true},
		{"Server", false, true},
		{"Set-Cookie", false, true},
		{"X-Forwarded-For", true, false},
		{"x-forwarded-proto", true, false},
		{"X-Real-IP", true, false},
		{"Forwarded", true, false},
		{"X-Client-Verify", true, false},
		{"X-Forwarded-For", false, true}, // responses carry none of lb's
		{"Host", true, false},
		{"Content-Length", false, false},
		{"Transfer-Encoding", true, false},
		{"Connection", false, false},
		{"Content-Encoding", false, false},
		{"Bad Name", true, false},
		{"", false, false},
	} {
		if err := CheckRuleField(tc.name, tc.request); (err == nil) != tc.ok {
			t.Errorf("%q (request %v): %v", tc.name, tc.request, err)
		}
	}
	if CheckRuleValue("a\r\nX-Evil: 1") == nil || CheckRuleValue("max-age=31536000; includeSubDomains") != nil {
		t.Error("CheckRuleValue")
	}
}
