package server

import (
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// memoryTrimmer gives memory back to the operating system once lb goes
// quiet after a burst. Go collects garbage only when the heap has grown
// by GOGC percent (100) since the last collection, and keeps freed pages
// for reuse: after a burst of new connections, whose TLS handshakes leave
// some tens of KB of garbage each, lb would go on holding up to twice its
// live memory until traffic picked up again. A C proxy frees as it goes.
//
// The janitor calls tick every second. When less than quietAlloc was
// allocated in each of the last quietTicks ticks and the heap holds more
// garbage and free pages not yet returned than minGarbage (or a quarter
// of the live heap, if larger), it collects and releases every free page
// (debug.FreeOSMemory), at most once every trimEvery. Under load nothing
// happens: the request path allocates nothing, a flood of handshakes is
// not quiet, and the collector paces itself as usual; light steady
// traffic, which is quiet, costs a collection every trimEvery at most.
type memoryTrimmer struct {
	quietAlloc uint64
	minGarbage uint64
	now        func() time.Time

	samples   []metrics.Sample
	lastAlloc uint64
	quiet     int       // consecutive quiet ticks
	lastTrim  time.Time // zero before the first
}

const (
	quietAlloc = 1 << 20 // bytes per tick
	quietTicks = 2
	minGarbage = 4 << 20
	trimEvery  = 30 * time.Second
)

func newMemoryTrimmer() *memoryTrimmer {
	t := &memoryTrimmer{
		quietAlloc: quietAlloc,
		minGarbage: minGarbage,
		now:        time.Now,
		samples: []metrics.Sample{
			{Name: "/gc/heap/allocs:bytes"},              // allocated since start
			{Name: "/memory/classes/heap/objects:bytes"}, // live and not yet collected
			{Name: "/gc/heap/live:bytes"},                // live at the last collection
			{Name: "/memory/classes/heap/free:bytes"},    // free, not returned
		},
	}
	t.read()
	return t
}

// read returns the bytes allocated since the last read, the live heap,
// and what a collection and release would give back.
func (t *memoryTrimmer) read() (allocated, live, reclaimable uint64) {
	metrics.Read(t.samples)
	allocs := t.samples[0].Value.Uint64()
	objects := t.samples[1].Value.Uint64()
	live = t.samples[2].Value.Uint64()
	free := t.samples[3].Value.Uint64()
	allocated, t.lastAlloc = allocs-t.lastAlloc, allocs
	if objects > live {
		reclaimable = objects - live
	}
	return allocated, live, reclaimable + free
}

// tick reports whether it released memory.
func (t *memoryTrimmer) tick() bool {
	allocated, live, reclaimable := t.read()
	if allocated >= t.quietAlloc {
		t.quiet = 0
		return false
	}
	t.quiet++
	now := t.now()
	if t.quiet < quietTicks || reclaimable < max(t.minGarbage, live/4) ||
		!t.lastTrim.IsZero() && now.Sub(t.lastTrim) < trimEvery {
		return false
	}
	debug.FreeOSMemory()
	t.lastTrim = now
	t.read() // FreeOSMemory's own allocations do not count
	return true
}
