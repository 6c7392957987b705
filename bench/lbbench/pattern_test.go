package main

import (
	"bytes"
	"net"
	"testing"
)

// wholeBody makes the whole body with this seed the way an upload sends it.
func wholeBody(seed uint64, size int) []byte {
	out := make([]byte, 0, size)
	block := make([]byte, blockSize)
	for i := int64(0); len(out) < size; i++ {
		fillBlock(block, seed, i)
		out = append(out, block[:min(blockSize, size-len(out))]...)
	}
	return out
}

func TestPatternMatches(t *testing.T) {
	const size = 3*blockSize + 100
	b := wholeBody(7, size)
	for _, tc := range []struct {
		name     string
		off, end int
		seeded   bool // holds the first byte of a block's stamp, which has the seed
	}{
		{"whole", 0, size, true},
		{"inside a stamp", blockSize + 3, blockSize + 9, false},
		{"across a stamp", blockSize - 5, blockSize + 40, true},
		{"after a stamp", blockSize + blockStamp, 2 * blockSize, false},
		{"tail", 3 * blockSize, size, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := b[tc.off:tc.end]
			if !patternMatches(7, int64(tc.off), p) {
				t.Fatal("the body does not match itself")
			}
			if tc.seeded && patternMatches(8, int64(tc.off), p) {
				t.Fatal("another seed's body matches")
			}
			q := bytes.Clone(p)
			q[len(q)/2] ^= 1
			if patternMatches(7, int64(tc.off), q) {
				t.Fatal("a changed byte matches")
			}
		})
	}
	// A block in the wrong place.
	moved := append(bytes.Clone(b[blockSize:2*blockSize]), b[blockSize:2*blockSize]...)
	if patternMatches(7, blockSize, moved) {
		t.Fatal("a repeated block matches")
	}
}

// TestWritePattern checks that the backend's writes make the body an
// upload sends.
func TestWritePattern(t *testing.T) {
	for _, size := range []int{0, 10, blockStamp, blockSize, 2*blockSize + 17} {
		a, b := net.Pipe()
		go func() {
			writePattern(a, 5, int64(size))
			a.Close()
		}()
		var got bytes.Buffer
		got.ReadFrom(b)
		if !bytes.Equal(got.Bytes(), wholeBody(5, size)) {
			t.Fatalf("size %d: %d bytes, not the body", size, got.Len())
		}
	}
}
