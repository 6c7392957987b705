package tlsterm

import (
	"crypto/rand"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"time"
)

// Session ticket key schedule: a new key every TicketRotation; tickets
// sealed with any of the last TicketKeyCount keys are still accepted, so a
// client can resume for up to TicketRotation × TicketKeyCount after its
// last full handshake. Rotating bounds how much past traffic a stolen key
// would open (forward secrecy for resumed sessions).
const (
	TicketRotation = time.Hour
	TicketKeyCount = 12
)

// TicketKeys is a listener's session ticket keys. One set lives as long
// as the listener's socket, across reloads and certificate changes, so
// that clients keep resuming through them. Build it with NewTicketKeys (the
// zero value is not usable); it is safe for concurrent use.
type TicketKeys struct {
	now func() time.Time

	mu   sync.Mutex
	keys [][32]byte    // newest first
	made []time.Time   // when each key was made
	gen  atomic.Uint64 // bumped on every rotation
	next atomic.Int64  // unix nanoseconds of the next rotation
}

// NewTicketKeys returns a key set with one fresh key.
func NewTicketKeys() *TicketKeys {
	k := &TicketKeys{now: time.Now}
	k.rotate(k.now())
	return k
}

// rotate adds a fresh key and drops those made TicketKeyCount rotations
// ago or earlier (after a long quiet spell, that can be all of them).
// Callers hold mu, or own k alone.
func (k *TicketKeys) rotate(now time.Time) {
	var key [32]byte
	_, _ = rand.Read(key[:]) // never fails: without randomness it ends the process itself
	keys, made := [][32]byte{key}, []time.Time{now}
	for i := range k.keys {
		if len(keys) < TicketKeyCount && now.Sub(k.made[i]) < TicketRotation*TicketKeyCount {
			keys, made = append(keys, k.keys[i]), append(made, k.made[i])
		}
	}
	k.keys, k.made = keys, made
	k.next.Store(now.Add(TicketRotation).UnixNano())
	k.gen.Add(1)
}

// apply gives cfg the current keys if it has older ones (cfgGen holds the
// generation cfg has), rotating first when the newest key is due. When
// nothing changed, as between rotations, it costs three atomic loads.
func (k *TicketKeys) apply(cfg *tls.Config, cfgGen *atomic.Uint64) {
	now := k.now()
	if now.UnixNano() < k.next.Load() && cfgGen.Load() == k.gen.Load() {
		return
	}
	k.mu.Lock()
	if now.UnixNano() >= k.next.Load() {
		k.rotate(now)
	}
	keys, gen := k.keys, k.gen.Load()
	k.mu.Unlock()
	if cfgGen.Load() != gen {
		cfg.SetSessionTicketKeys(keys)
		cfgGen.Store(gen)
	}
}
