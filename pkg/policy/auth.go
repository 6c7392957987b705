package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/atomic"
	"golang.org/x/crypto/bcrypt"
)

// BasicAuth checks HTTP Basic credentials (RFC 7617) against users and
// their bcrypt hashes, as an htpasswd file made with `htpasswd -B` holds
// them. A bcrypt check takes tens of milliseconds on purpose, so:
// credentials that passed are remembered (by a SHA-256 of user and
// password, in a bounded set) and pass again without one; and each check
// of credentials not remembered takes a token of the client address's
// bucket (burst 10, one every 6 s), so that an address guessing
// passwords gets 10 tries and then one every 6 s, answered 429 without a
// check in between, and cannot turn lb's CPU into bcrypt. Its methods are
// safe for concurrent use.
type BasicAuth struct {
	users map[string][]byte
	// Challenge is the 401's WWW-Authenticate value.
	Challenge []byte
	// Forward passes the Authorization field on to the backend; by
	// default it is removed.
	Forward bool
	// Listener and Route name what it guards, for metrics.
	Listener, Route string
	// Failures counts requests refused 401 (bad or missing credentials),
	// Limited those refused 429 (too many checks from their address).
	Failures, Limited atomic.Uint64

	guesses *Limiter
	mu      sync.Mutex
	passed  map[[32]byte]struct{}
}

// maxPassed bounds the credentials remembered; past it the set starts
// over.
const maxPassed = 4096

// NewBasicAuth makes a checker of users (name to bcrypt hash).
func NewBasicAuth(users map[string][]byte, realm string) *BasicAuth {
	return &BasicAuth{
		users:     users,
		Challenge: []byte(`Basic realm="` + realm + `", charset="UTF-8"`),
		guesses:   NewLimiter(1.0/6, 10),
		passed:    map[[32]byte]struct{}{},
	}
}

// AuthResult is what Check found.
type AuthResult int

// Check's results.
const (
	AuthOK      AuthResult = iota // the credentials are a user's
	AuthFailed                    // none, malformed, or wrong: 401
	AuthLimited                   // too many checks from the address: 429
)

// Check checks the value of a request's Authorization field from
// client at now.
func (a *BasicAuth) Check(authorization []byte, client netip.Addr, now time.Time) AuthResult {
	var buf [256]byte
	user, pass, ok := parseBasic(buf[:0], authorization)
	if !ok {
		a.Failures.Inc()
		return AuthFailed
	}
	// user and pass sit in buf or its copy, user:pass: the key hashes them.
	key := sha256.Sum256(user[:len(user)+1+len(pass)])
	a.mu.Lock()
	_, known := a.passed[key]
	a.mu.Unlock()
	if known {
		return AuthOK
	}
	if ok, _ := a.guesses.Allow(client, now); !ok {
		a.Limited.Inc()
		return AuthLimited
	}
	hash, found := a.users[string(user)]
	if !found {
		// As long as a check of a known user, so that the time does not
		// tell which users exist.
		hash = dummyHash
	}
	if bcrypt.CompareHashAndPassword(hash, pass) != nil || !found {
		a.Failures.Inc()
		return AuthFailed
	}
	a.mu.Lock()
	if len(a.passed) >= maxPassed {
		clear(a.passed)
	}
	a.passed[key] = struct{}{}
	a.mu.Unlock()
	return AuthOK
}

// dummyHash is a bcrypt hash no password matches in practice, checked for
// unknown users.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("lb: no such user"), bcrypt.DefaultCost)

// parseBasic splits "Basic base64(user:password)", decoded into dst's
// storage when it fits; user and pass are adjacent there, with the colon
// between them.
func parseBasic(dst []byte, v []byte) (user, pass []byte, ok bool) {
	const prefix = "basic "
	if len(v) < len(prefix) || !bytes.EqualFold(v[:len(prefix)], []byte(prefix)) {
		return nil, nil, false
	}
	enc := bytes.TrimSpace(v[len(prefix):])
	n := base64.StdEncoding.DecodedLen(len(enc))
	if n > cap(dst) {
		dst = make([]byte, n)
	}
	dst = dst[:n]
	n, err := base64.StdEncoding.Decode(dst, enc)
	if err != nil {
		return nil, nil, false
	}
	user, pass, ok = bytes.Cut(dst[:n], []byte{':'})
	return user, pass, ok && len(user) > 0
}
