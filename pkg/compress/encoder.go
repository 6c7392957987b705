package compress

import (
	"io"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Each coding's settings are fixed, chosen for a proxy that compresses
// on the fly: fast enough that a core compresses far more than it
// proxies, and with windows small enough that an encoder, which a
// response holds while it streams, stays small (BenchmarkCompress and
// TestEncoderMemory measure both; docs/compression.md has the numbers).
const (
	// GzipLevel is gzip's level (klauspost/compress: 1 fastest, 9
	// smallest). Caddy's default; NGINX's is 1.
	GzipLevel = 5
	// BrotliQuality is brotli's quality (0-11). 4 is the last quality
	// before the encoder's much slower hashers; on-the-fly brotli at CDNs
	// runs at 4 or 5.
	BrotliQuality = 4
	// BrotliWindowLog is the log2 of brotli's window: 256 KiB rather
	// than the 4 MiB default, which the encoder would hold per response.
	BrotliWindowLog = 18
	// ZstdWindow is zstd's window (SpeedDefault, level 3): 256 KiB
	// rather than the 8 MiB default.
	ZstdWindow = 256 << 10
)

// encoderMemory is what one encoder of each coding holds once it has
// compressed a streamed body (TestEncoderMemory measures it: about 1.9
// MiB for zstd, 1.4 MiB for brotli, 1 MiB for gzip), rounded up; a
// response compressing counts it, and its input buffer, against the
// process's body memory (global.max_body_memory) while it holds the
// encoder.
var encoderMemory = [numEncodings]int64{Zstd: 2 << 20, Brotli: 3 << 19, Gzip: 9 << 17}

// encoder is one coding's compressor: a writer that can be pointed at a
// new destination (Reset), flushed at the end of each piece of a
// streamed body, and closed to end the coded stream. Encoders are pooled
// by coding and reused: each holds its window and tables.
type encoder interface {
	io.Writer
	Reset(w io.Writer)
	Flush() error
	Close() error
}

// zstdEncoder adapts *zstd.Encoder, whose Reset returns nothing.
type zstdEncoder struct{ *zstd.Encoder }

func (z zstdEncoder) Reset(w io.Writer) { z.Encoder.Reset(w) }

var encoders = [numEncodings]sync.Pool{
	Gzip: {New: func() any {
		w, _ := gzip.NewWriterLevel(nil, GzipLevel) // the level is valid
		return w
	}},
	Brotli: {New: func() any {
		return brotli.NewWriterOptions(nil, brotli.WriterOptions{Quality: BrotliQuality, LGWin: BrotliWindowLog})
	}},
	Zstd: {New: func() any {
		w, _ := zstd.NewWriter(nil, // the options are valid
			zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithWindowSize(ZstdWindow),
			zstd.WithEncoderConcurrency(1), // no goroutines: each response compresses on its own
			zstd.WithLowerEncoderMem(true),
		)
		return zstdEncoder{w}
	}},
}

// getEncoder returns a pooled encoder for e writing to w.
func getEncoder(e Encoding, w io.Writer) encoder {
	enc := encoders[e].Get().(encoder)
	enc.Reset(w)
	return enc
}

// putEncoder pools enc, an encoder for e, again. It is pointed at
// nothing first, so that the pool holds no response's buffer.
func putEncoder(e Encoding, enc encoder) {
	enc.Reset(io.Discard)
	encoders[e].Put(enc)
}
