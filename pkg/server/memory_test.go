package server

import (
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

var sink []byte

func TestMemoryTrimmerReleasesAfterBurst(t *testing.T) {
	// With the collector off, a burst leaves all of its garbage behind.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	debug.FreeOSMemory()
	clock := time.Now()
	tr := newMemoryTrimmer()
	tr.now = func() time.Time { return clock }
	tick := func() bool { clock = clock.Add(time.Second); return tr.tick() }
	for range 2 {
		if tick() {
			t.Fatal("released memory with no garbage")
		}
	}
	burst := func() {
		for range 48 << 20 / 4096 {
			sink = make([]byte, 4096)
		}
		sink = nil
	}
	burst()
	before := readMetric("/memory/classes/heap/objects:bytes")
	if tick() {
		t.Fatal("released memory in the second of the burst")
	}
	if tick() {
		t.Fatal("released memory after one quiet second")
	}
	if !tick() {
		t.Fatal("did not release memory after two quiet seconds")
	}
	after := readMetric("/memory/classes/heap/objects:bytes")
	released := readMetric("/memory/classes/heap/released:bytes")
	t.Logf("heap objects %d MiB -> %d MiB; released %d MiB", before>>20, after>>20, released>>20)
	if before-after < 24<<20 {
		t.Errorf("heap objects went from %d to %d bytes after a 48 MiB burst", before, after)
	}
	if released < 24<<20 {
		t.Errorf("%d bytes released to the system after a 48 MiB burst", released)
	}
	if tick() {
		t.Error("released again with nothing new to release")
	}
	// Another burst soon after waits for trimEvery since the last release.
	burst()
	for range 5 {
		if tick() {
			t.Fatal("released twice within trimEvery")
		}
	}
	clock = clock.Add(trimEvery)
	if !tick() {
		t.Error("did not release the second burst once trimEvery had passed")
	}
}

func readMetric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
