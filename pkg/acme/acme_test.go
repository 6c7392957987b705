package acme

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/config"
)

func TestRenewalRatio(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		before, life time.Duration
		want         float64
	}{
		{0, 90 * day, 0}, // certmagic's default, a third
		{30 * day, 0, 0}, // lifetime not known yet
		{30 * day, 90 * day, 1.0 / 3},
		{9 * day, 90 * day, 0.1},
		{100 * day, 90 * day, 0.5}, // longer than the life: halfway
	} {
		if got := renewalRatio(tc.before, tc.life); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("renewalRatio(%s, %s) = %v, want %v", tc.before, tc.life, got, tc.want)
		}
	}
}

func spec(listener, storage string, domains ...string) Spec {
	return Spec{Listener: listener, TLSALPN: "127.0.0.1:8443", HTTP: "127.0.0.1:8080", ACME: &config.ACME{
		Domains: domains, Directory: "https://127.0.0.1:1/dir", Storage: storage,
		Challenges: []string{config.ChallengeTLSALPN, config.ChallengeHTTP}, KeyType: "ecdsa-p256",
	}}
}

// TestPlansKeepRunningNames: a plan keeps the running name when its
// settings are unchanged (a reload orders nothing again), builds a new one
// when they changed, and nothing starts before Commit.
func TestPlansKeepRunningNames(t *testing.T) {
	m := New(hclog.NewNullLogger(), Options{CheckInterval: time.Hour})
	defer m.Stop()
	dir := t.TempDir()

	p1, err := m.Prepare([]Spec{spec("https", dir, "a.example", "b.example")})
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.fresh) != 2 || p1.Set("https") == nil || p1.Set("other") != nil || p1.Empty() {
		t.Fatalf("first plan: %d fresh names", len(p1.fresh))
	}
	// Committed without a CA to reach: the names stay obtaining (or
	// failing), with no certificate, and the handshake store has none.
	m.Commit(p1)
	if c := p1.Set("https").Certificate("a.example"); c != nil {
		t.Errorf("a certificate before any order: %v", c.Leaf.Subject)
	}
	for _, st := range p1.Set("https").Status() {
		if st.State != StateObtaining && st.State != StateFailing {
			t.Errorf("%s: state %q", st.Domain, st.State)
		}
	}

	same, err := m.Prepare([]Spec{spec("https", dir, "a.example", "b.example")})
	if err != nil {
		t.Fatal(err)
	}
	if len(same.fresh) != 0 || same.names["a.example"] != p1.names["a.example"] {
		t.Errorf("an unchanged config built %d new names", len(same.fresh))
	}
	changed := spec("https", dir, "a.example", "c.example")
	changed.ACME.Email = "ops@example.com"
	p3, err := m.Prepare([]Spec{changed})
	if err != nil {
		t.Fatal(err)
	}
	if len(p3.fresh) != 2 || p3.names["a.example"] == p1.names["a.example"] {
		t.Errorf("changed settings: %d new names", len(p3.fresh))
	}
	if _, ok := p3.HTTPChallenge("a.example", "/.well-known/acme-challenge/none"); ok {
		t.Error("answered an http-01 request no challenge is pending for")
	}
	if EmptyPlan().Set("https") != nil || !EmptyPlan().Empty() {
		t.Error("the empty plan has names")
	}
}

// TestUnwritableStorageRetried: a name whose storage lb cannot use (here
// a file where the folder should be) shows failing with the error and a
// next attempt, not obtaining for ever, and is tried again: once the
// folder can be made, the next attempt gets as far as the CA.
func TestUnwritableStorageRetried(t *testing.T) {
	defer func(r []time.Duration) { retryIntervals = r }(retryIntervals)
	retryIntervals = []time.Duration{100 * time.Millisecond}
	m := New(hclog.NewNullLogger(), Options{CheckInterval: time.Hour})
	defer m.Stop()
	dir := t.TempDir()
	storage := filepath.Join(dir, "acme")
	if err := os.WriteFile(storage, []byte("not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := m.Prepare([]Spec{spec("https", storage, "a.example")})
	if err != nil {
		t.Fatal(err)
	}
	m.Commit(p)
	status := func() Status { return p.Set("https").Status()[0] }
	// (The CA cannot be reached: certmagic retries that itself, in the
	// same goroutine, which the test ends with Stop.)
	waitState := func(what string, ok func(Status) bool) Status {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if st := status(); ok(st) {
				return st
			} else if time.Now().After(deadline) {
				t.Fatalf("%s: %+v", what, st)
			}
		}
	}
	st := waitState("failing on the storage", func(st Status) bool { return st.State == StateFailing && !st.NextAttempt.IsZero() })
	if !strings.Contains(st.LastError, "not a directory") {
		t.Errorf("last error %q does not say what is wrong with the storage", st.LastError)
	}
	if err := os.Remove(storage); err != nil {
		t.Fatal(err)
	}
	waitState("tried again, as far as the CA", func(st Status) bool {
		return st.State == StateFailing && st.LastError != "" && !strings.Contains(st.LastError, "not a directory")
	})
}
