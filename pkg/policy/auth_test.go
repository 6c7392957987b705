package policy

import (
	"encoding/base64"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func basic(user, pass string) []byte {
	return []byte("Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
}

func TestBasicAuth(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	a := NewBasicAuth(map[string][]byte{"alice": hash}, "ops")
	if string(a.Challenge) != `Basic realm="ops", charset="UTF-8"` {
		t.Errorf("challenge %q", a.Challenge)
	}
	client := netip.MustParseAddr("192.0.2.1")
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		auth string
		want AuthResult
	}{
		{string(basic("alice", "s3cret")), AuthOK},
		{"basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")), AuthOK},
		{string(basic("alice", "wrong")), AuthFailed},
		{string(basic("bob", "s3cret")), AuthFailed},
		{"", AuthFailed},
		{"Bearer abc", AuthFailed},
		{"Basic !!!", AuthFailed},
		{"Basic " + base64.StdEncoding.EncodeToString([]byte("no-colon")), AuthFailed},
	} {
		if got := a.Check([]byte(tc.auth), client, now); got != tc.want {
			t.Errorf("%q: %v, want %v", tc.auth, got, tc.want)
		}
	}
	if a.Failures.Load() != 6 {
		t.Errorf("failures %d, want 6", a.Failures.Load())
	}
	// Remembered: passes with no token of the address's bucket left.
	guesser := netip.MustParseAddr("198.51.100.9")
	for range 10 {
		a.Check(basic("alice", "guess"), guesser, now)
	}
	if got := a.Check(basic("alice", "guess2"), guesser, now); got != AuthLimited {
		t.Errorf("the 11th guess from one address: %v, want AuthLimited", got)
	}
	if got := a.Check(basic("alice", "s3cret"), guesser, now); got != AuthOK {
		t.Errorf("remembered credentials from a limited address: %v", got)
	}
	// Another address is not limited by the guesser.
	if got := a.Check(basic("alice", "nope"), netip.MustParseAddr("192.0.2.99"), now); got != AuthFailed {
		t.Errorf("another address: %v", got)
	}
	// Six seconds on, one more try.
	if got := a.Check(basic("alice", "guess3"), guesser, now.Add(6*time.Second)); got != AuthFailed {
		t.Errorf("after 6 s: %v, want a check (AuthFailed)", got)
	}
}

func TestBasicAuthRememberedAllocatesNothing(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	a := NewBasicAuth(map[string][]byte{"alice": hash}, "ops")
	cred := basic("alice", "s3cret")
	client := netip.MustParseAddr("192.0.2.1")
	now := time.Now()
	a.Check(cred, client, now)
	if n := testing.AllocsPerRun(100, func() {
		if a.Check(cred, client, now) != AuthOK {
			t.Fatal("refused")
		}
	}); n != 0 {
		t.Errorf("%v allocations per remembered check", n)
	}
}
