package main

import (
	"bytes"
	"encoding/binary"
)

// The bodies of the uploads and downloads scenarios are generated, never
// stored: blockSize-byte blocks that all share one fixed pseudo-random
// base, except their first 16 bytes, which are the body's seed and the
// block's index. A block lost, repeated, reordered or taken from another
// body changes the bytes, and so the byte count or the hash.

const (
	blockSize  = 64 << 10
	blockStamp = 16 // seed and index at the start of each block
)

// patternBase is the shared part of every block, made once from a fixed
// xorshift seed; it is read-only after init.
var patternBase = func() []byte {
	b := make([]byte, blockSize)
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	return b
}()

// stamp writes the first blockStamp bytes of block i of the body with
// this seed.
func stamp(dst []byte, seed uint64, i int64) {
	binary.LittleEndian.PutUint64(dst[0:], seed)
	binary.LittleEndian.PutUint64(dst[8:], uint64(i))
}

// fillBlock writes block i of the body with this seed into dst, which
// holds at least blockSize bytes.
func fillBlock(dst []byte, seed uint64, i int64) {
	copy(dst[blockStamp:blockSize], patternBase[blockStamp:])
	stamp(dst, seed, i)
}

// patternMatches reports whether p is the body with this seed from
// offset off on.
func patternMatches(seed uint64, off int64, p []byte) bool {
	var st [blockStamp]byte
	for len(p) > 0 {
		i, j := off/blockSize, int(off%blockSize)
		n := min(len(p), blockSize-j)
		if j < blockStamp {
			stamp(st[:], seed, i)
			k := min(n, blockStamp-j)
			if !bytes.Equal(p[:k], st[j:j+k]) {
				return false
			}
			if !bytes.Equal(p[k:n], patternBase[j+k:j+n]) {
				return false
			}
		} else if !bytes.Equal(p[:n], patternBase[j:j+n]) {
			return false
		}
		p, off = p[n:], off+int64(n)
	}
	return true
}
