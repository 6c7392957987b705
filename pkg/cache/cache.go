// Package cache is lb's HTTP response cache, one per pool that has a
// [pool.cache]: a shared cache by the rules of RFC 9111, held in memory,
// bounded in bytes and evicting the least recently used, with variants by
// Vary and collapsed forwarding of concurrent misses (Traffic Server's
// read-while-writer). pkg/httpcache, in the request path, decides when to
// look up, store, revalidate and serve stale; this package keeps the
// entries and the rules.
package cache

import (
	"bytes"
	"container/list"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// maxVariants bounds the variants kept for one URL.
const maxVariants = 16

// object is what the cache keeps for one URL: its variants.
type object struct {
	key      string
	variants []*Entry
	size     int64
}

// Cache is one pool's cache. Build it with New; the zero value is not
// usable. Its methods are safe for concurrent use, and the entries it
// returns may be read by any number of goroutines (see Entry).
type Cache struct {
	maxSize, maxObject int64
	opts               Options

	mu    sync.Mutex
	lru   list.List // *object, most recently used first
	objs  map[string]*list.Element
	size  int64
	fills map[string]*Fill

	// Results counts lookups by result, for metrics and status.
	Results [numResults]atomic.Uint64
}

// Result is how a request was answered, as X-Cache and metrics say.
type Result int

const (
	Hit         Result = iota // a fresh stored entry answered
	Miss                      // no entry could answer: the origin did (or, for only-if-cached, a 504)
	Stale                     // a stored entry past its freshness answered, as the client or the entry allows
	Revalidated               // the origin confirmed a stored entry with a 304
	Bypass                    // the request may not be answered from the cache (its method, no-store)
	numResults
)

var resultNames = [numResults]string{"HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"}

// String is the result as X-Cache says it: "HIT", "MISS" and so on.
func (r Result) String() string { return resultNames[r] }

// New returns a cache holding at most maxSize bytes, entries of at most
// maxObject bytes of body.
func New(maxSize, maxObject int64, opts Options) *Cache {
	return &Cache{maxSize: maxSize, maxObject: maxObject, opts: opts, objs: map[string]*list.Element{}, fills: map[string]*Fill{}}
}

// Options returns the operator's choices.
func (c *Cache) Options() Options { return c.opts }

// MaxObject is the largest body stored.
func (c *Cache) MaxObject() int64 { return c.maxObject }

// Get returns the variant of key that req selects, or nil.
func (c *Cache) Get(key []byte, req *fasthttp.RequestHeader) *Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.objs[string(key)]
	if el == nil {
		return nil
	}
	o := el.Value.(*object)
	for _, e := range o.variants {
		if e.Matches(req) {
			c.lru.MoveToFront(el)
			return e
		}
	}
	return nil
}

// Put stores e under key, replacing the variant it stands for. Entries
// larger than the object limit are not stored.
func (c *Cache) Put(key []byte, e *Entry) bool {
	if int64(len(e.Body)) > c.maxObject || e.size > c.maxSize {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.objs[string(key)]
	if el == nil {
		el = c.lru.PushFront(&object{key: string(key)})
		c.objs[string(key)] = el
	} else {
		c.lru.MoveToFront(el)
	}
	o := el.Value.(*object)
	replaced := false
	for i, old := range o.variants {
		if sameVariant(old, e) {
			o.size -= old.size
			c.size -= old.size
			o.variants[i] = e
			replaced = true
			break
		}
	}
	if !replaced {
		if len(o.variants) >= maxVariants {
			old := o.variants[0]
			o.size -= old.size
			c.size -= old.size
			o.variants = append(o.variants[:0], o.variants[1:]...)
		}
		o.variants = append(o.variants, e)
	}
	o.size += e.size
	c.size += e.size
	c.evict()
	return true
}

// evict drops least recently used objects until the cache fits.
func (c *Cache) evict() {
	for c.size > c.maxSize {
		el := c.lru.Back()
		if el == nil {
			return
		}
		c.remove(el)
	}
}

func (c *Cache) remove(el *list.Element) {
	o := el.Value.(*object)
	c.lru.Remove(el)
	delete(c.objs, o.key)
	c.size -= o.size
}

// Purge removes every variant of key; false if there was none.
func (c *Cache) Purge(key []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el := c.objs[string(key)]
	if el == nil {
		return false
	}
	c.remove(el)
	return true
}

// PurgeAll empties the cache and returns how many URLs it held.
func (c *Cache) PurgeAll() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.objs)
	c.lru.Init()
	clear(c.objs)
	c.size = 0
	return n
}

// Stats are a cache's size and use, a copy made when asked for.
type Stats struct {
	MaxSize   int64             `json:"max_size"`
	MaxObject int64             `json:"max_object"`
	Bytes     int64             `json:"bytes"`
	Objects   int               `json:"objects"`
	Results   map[string]uint64 `json:"results"`
}

// Stats returns the cache's size now and its results so far.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	s := Stats{MaxSize: c.maxSize, MaxObject: c.maxObject, Bytes: c.size, Objects: len(c.objs), Results: map[string]uint64{}}
	c.mu.Unlock()
	for r := range numResults {
		s.Results[resultNames[r]] = c.Results[r].Load()
	}
	return s
}

// Count records how a request was answered.
func (c *Cache) Count(r Result) { c.Results[r].Add(1) }

// Key appends the cache key of a request to dst: scheme, host and
// request target. The scheme is part of it because one pool may serve a
// plaintext and a TLS listener, and a page built for one (redirects,
// absolute links) is wrong for the other. The host is compared without
// case, and without the scheme's default port (":443" when tls, ":80"
// when not), so that the spellings of one site share entries.
func Key(dst, host, uri []byte, tls bool) []byte {
	port := ":80"
	if tls {
		port = ":443"
		dst = append(dst, "https "...)
	} else {
		dst = append(dst, "http "...)
	}
	host = bytes.TrimSuffix(host, []byte(port))
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	dst = append(dst, ' ')
	return append(dst, uri...)
}

// KeysOf are the keys of a URL given to purge: "https://host/path?q",
// "http://host/path" or "host/path", the host as clients send it in
// Host. A URL names its content whichever scheme it was asked by, so the
// keys are those of both schemes; the scheme written (https when none)
// only says which default port the host may carry.
func KeysOf(url string) ([2][]byte, error) {
	port := ":443"
	if rest, ok := strings.CutPrefix(url, "http://"); ok {
		url, port = rest, ":80"
	} else {
		url = strings.TrimPrefix(url, "https://")
	}
	host, path, ok := strings.Cut(url, "/")
	if !ok || host == "" {
		return [2][]byte{}, fmt.Errorf("url %q: want host/path, as in https://www.example.com/page", url)
	}
	host = strings.TrimSuffix(host, port)
	return [2][]byte{Key(nil, []byte(host), []byte("/"+path), true), Key(nil, []byte(host), []byte("/"+path), false)}, nil
}

// PurgeURL removes every variant stored for url (see KeysOf) for both
// schemes, and returns how many keys it removed (0, 1 or 2).
func (c *Cache) PurgeURL(url string) (int, error) {
	keys, err := KeysOf(url)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		if c.Purge(k) {
			n++
		}
	}
	return n, nil
}

// Fill is a miss being fetched from the origin; requests for the same
// key wait for it rather than fetch it again. Any number of goroutines
// may Wait on it; only the leader ends it, once, with EndFill.
type Fill struct {
	done  chan struct{}
	entry *Entry
}

// StartFill registers a fetch of key. leader is true for the request that
// must fetch; the others get the leader's Fill to Wait on.
func (c *Cache) StartFill(key []byte) (f *Fill, leader bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.fills[string(key)]; f != nil {
		return f, false
	}
	f = &Fill{done: make(chan struct{})}
	c.fills[string(key)] = f
	return f, true
}

// EndFill ends the leader's fetch; e is what was stored, nil if nothing
// was (the waiters then fetch for themselves).
func (c *Cache) EndFill(key []byte, f *Fill, e *Entry) {
	c.mu.Lock()
	if c.fills[string(key)] == f {
		delete(c.fills, string(key))
	}
	c.mu.Unlock()
	f.entry = e
	close(f.done)
}

// Wait waits at most timeout for the fill and returns what it stored, or
// nil.
func (f *Fill) Wait(timeout time.Duration) *Entry {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-f.done:
		return f.entry
	case <-t.C:
		return nil
	}
}
