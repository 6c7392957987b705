package server

import (
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

var sink []byte

func TestMemoryTrimmerReleasesAfterBurst(t *testing.T) {
	// With the collector off, a burst leaves all of its garbage behind.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	debug.FreeOSMemory()
	tr := newMemoryTrimmer()
	if tr.tick() {
		t.Fatal("released memory with no garbage")
	}
	const burst = 48 << 20
	for range burst / 4096 {
		sink = make([]byte, 4096)
	}
	sink = nil
	before := readMetric("/memory/classes/heap/objects:bytes")
	if tr.tick() {
		t.Fatal("released memory in the second of the burst")
	}
	if !tr.tick() {
		t.Fatal("did not release memory once quiet")
	}
	after := readMetric("/memory/classes/heap/objects:bytes")
	released := readMetric("/memory/classes/heap/released:bytes")
	t.Logf("heap objects %d MiB -> %d MiB; released %d MiB", before>>20, after>>20, released>>20)
	if before-after < burst/2 {
		t.Errorf("heap objects went from %d to %d bytes after a %d-byte burst", before, after, burst)
	}
	if released < burst/2 {
		t.Errorf("%d bytes released to the system after a %d-byte burst", released, burst)
	}
	if tr.tick() {
		t.Error("released again with nothing new to release")
	}
}

func readMetric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
