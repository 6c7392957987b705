package compress

import (
	"io"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/metrics"
)

// inChunk is the most of a streamed body read (and then compressed and
// flushed) at a time. A read takes what the backend has sent, up to
// this, so a trickling body (events, a long poll) goes out piece by
// piece as it comes.
const inChunk = 16 << 10

// Stream is a response body compressed as it streams: each Read takes
// the next piece of the source body (one read of it), compresses it,
// flushes the encoder so that the client gets it now, and gives out the
// coded bytes; at the source's end the coded stream is ended. It holds
// one encoder, one input buffer of 16 KiB and the coded bytes of one
// piece, whatever the body's length, counted in the process's body
// memory (streamMemory) while it streams. It is fasthttp's body stream: read
// by one goroutine, then closed once with CloseWithError, which closes
// the source and pools the Stream, so it must not be used after.
type Stream struct {
	src   io.Reader
	enc   encoder
	e     Encoding
	in    *[]byte
	out   []byte // coded bytes not yet given out: out[off:]
	off   int
	done  bool  // the source ended, or failed
	err   error // what Read returns once out is drained
	stats *metrics.Compression
	nIn   uint64
	nOut  uint64
}

var (
	streams = sync.Pool{New: func() any { return new(Stream) }}
	inBufs  = sync.Pool{New: func() any { b := make([]byte, inChunk); return &b }}
)

// streamMemory is what a Stream compressing with e counts in the
// process's body memory: its encoder, input buffer, and the coded bytes
// of a piece.
func streamMemory(e Encoding) int64 { return encoderMemory[e] + 2*inChunk }

// newStream compresses src with e. The caller has taken streamMemory(e)
// of the body memory, which CloseWithError gives back.
func newStream(src io.Reader, e Encoding, stats *metrics.Compression) *Stream {
	s := streams.Get().(*Stream)
	*s = Stream{src: src, e: e, in: inBufs.Get().(*[]byte), out: s.out[:0], stats: stats}
	s.enc = getEncoder(e, s)
	return s
}

// Write takes the encoder's output.
func (s *Stream) Write(p []byte) (int, error) {
	s.out = append(s.out, p...)
	return len(p), nil
}

// Read implements io.Reader.
func (s *Stream) Read(p []byte) (int, error) {
	for s.off == len(s.out) {
		if s.done {
			return 0, s.err
		}
		s.out, s.off = s.out[:0], 0
		s.fill()
	}
	n := copy(p, s.out[s.off:])
	s.off += n
	s.nOut += uint64(n)
	return n, nil
}

// fill reads the source once and codes what it gave into out.
func (s *Stream) fill() {
	n, err := s.src.Read(*s.in)
	if n > 0 {
		s.nIn += uint64(n)
		if _, werr := s.enc.Write((*s.in)[:n]); werr != nil {
			s.done, s.err = true, werr
			return
		}
	}
	switch {
	case err == io.EOF:
		s.done, s.err = true, io.EOF
		if cerr := s.enc.Close(); cerr != nil {
			s.err = cerr
		}
	case err != nil:
		// The coded stream is left unended: the client must not take
		// a broken body for a whole one.
		s.done, s.err = true, err
	case n > 0:
		if ferr := s.enc.Flush(); ferr != nil {
			s.done, s.err = true, ferr
		}
	}
}

// CloseWithError closes the source body with err (fasthttp calls it once
// the body is written, or abandoned), counts the bytes and releases the
// Stream.
func (s *Stream) CloseWithError(err error) error {
	var cerr error
	switch c := s.src.(type) {
	case fasthttp.ReadCloserWithError:
		cerr = c.CloseWithError(err)
	case io.Closer:
		cerr = c.Close()
	}
	if s.stats != nil {
		s.stats.BytesIn.Add(s.nIn)
		s.stats.BytesOut.Add(s.nOut)
	}
	putEncoder(s.e, s.enc)
	bodymem.Give(streamMemory(s.e))
	inBufs.Put(s.in)
	out := s.out
	if cap(out) > 4*inChunk {
		out = nil // a piece that coded large: not kept
	}
	*s = Stream{out: out[:0]}
	streams.Put(s)
	return cerr
}
