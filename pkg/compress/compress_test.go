package compress

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/metrics"
)

// takeStream is newStream with its body memory taken, as Apply takes it.
func takeStream(src io.Reader, e Encoding, stats *metrics.Compression) *Stream {
	bodymem.Take(streamMemory(e))
	return newStream(src, e, stats)
}

// TestApplyBodyMemoryFull: while the process holds all the body memory
// it may, answers go uncompressed (with Vary all the same), and what a
// compressed answer took is given back.
func TestApplyBodyMemoryFull(t *testing.T) {
	p, _ := testPolicy()
	text := testBody(1 << 20)
	limit := bodymem.Limit()
	defer bodymem.SetLimit(limit)
	used := bodymem.Used()
	bodymem.SetLimit(used + streamMemory(Zstd) - 1)
	ctx := exchange{accept: "zstd", header: []string{"Content-Type", "text/plain"}, body: text[:4096]}.ctx()
	p.Apply(ctx)
	if len(ctx.Response.Header.ContentEncoding()) > 0 || string(ctx.Response.Header.Peek("Vary")) != "Accept-Encoding" {
		t.Errorf("memory full: %s", ctx.Response.Header.Header())
	}
	bodymem.SetLimit(limit)
	ctx = exchange{accept: "zstd", header: []string{"Content-Type", "text/plain"}, stream: bytes.NewReader(text), streamLen: -1}.ctx()
	p.Apply(ctx)
	if string(ctx.Response.Header.ContentEncoding()) != "zstd" || bodymem.Used() != used+streamMemory(Zstd) {
		t.Errorf("a stream holds %d bytes of body memory, want %d", bodymem.Used()-used, streamMemory(Zstd))
	}
	body(t, &ctx.Response)
	if bodymem.Used() != used {
		t.Errorf("%d bytes of body memory still held after the stream", bodymem.Used()-used)
	}
}

// testBody is n bytes of JSON-like text that compresses as an API's
// answers do (repeated keys, varied values).
func testBody(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa")
	var b bytes.Buffer
	b.WriteString("[")
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, `{"id":%d,"name":"%s %s","score":%.3f,"tags":["%s","%s"],"active":%t},`+"\n",
			i, words[r.IntN(len(words))], words[r.IntN(len(words))], r.Float64()*1000,
			words[r.IntN(len(words))], words[r.IntN(len(words))], r.IntN(2) == 0)
	}
	return b.Bytes()[:n]
}

// decode decodes body coded by e.
func decode(t testing.TB, e Encoding, body []byte) []byte {
	t.Helper()
	var r io.Reader
	switch e {
	case Identity:
		return body
	case Gzip:
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		r = zr
	case Brotli:
		r = brotli.NewReader(bytes.NewReader(body))
	case Zstd:
		zr, err := zstd.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("zstd: %v", err)
		}
		defer zr.Close()
		r = zr
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%v: %v", e, err)
	}
	return out
}

func testPolicy() (*Policy, map[Encoding]*metrics.Compression) {
	stats := map[Encoding]*metrics.Compression{}
	p := New(Config{Algorithms: []string{"zstd", "br", "gzip"}, Types: []string{"text/*", "application/json", "Image/SVG+XML"}, MinSize: 1024},
		func(e Encoding) *metrics.Compression { stats[e] = new(metrics.Compression); return stats[e] })
	return p, stats
}

// exchange is a request and its answer as Apply sees them.
type exchange struct {
	method, accept string
	reqHeader      []string // pairs
	code           int
	header         []string // pairs
	body           []byte
	stream         io.Reader // with streamLen: the body as a stream
	streamLen      int
}

func (x exchange) ctx() *fasthttp.RequestCtx {
	ctx := new(fasthttp.RequestCtx)
	if x.method == "" {
		x.method = "GET"
	}
	ctx.Request.Header.SetMethod(x.method)
	ctx.Request.SetRequestURI("/x")
	if x.accept != "" {
		ctx.Request.Header.Set("Accept-Encoding", x.accept)
	}
	for i := 0; i+1 < len(x.reqHeader); i += 2 {
		ctx.Request.Header.Add(x.reqHeader[i], x.reqHeader[i+1])
	}
	resp := &ctx.Response
	resp.Header.SetNoDefaultContentType(true)
	if x.code == 0 {
		x.code = 200
	}
	resp.SetStatusCode(x.code)
	for i := 0; i+1 < len(x.header); i += 2 {
		resp.Header.Add(x.header[i], x.header[i+1])
	}
	switch {
	case x.stream != nil:
		resp.SetBodyStream(x.stream, x.streamLen)
	case x.method == "HEAD":
		resp.SkipBody = true
		resp.Header.SetContentLength(len(x.body))
	default:
		resp.SetBody(x.body)
	}
	return ctx
}

// body is what the client gets: the whole body, or the stream read to
// its end (and closed).
func body(t *testing.T, resp *fasthttp.Response) []byte {
	t.Helper()
	if !resp.IsBodyStream() {
		return resp.Body()
	}
	b, err := io.ReadAll(resp.BodyStream())
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.CloseBodyStream(); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestApplyRules(t *testing.T) {
	text := testBody(4000)
	json := []string{"Content-Type", "application/json"}
	with := func(pairs ...string) []string { return append(append([]string(nil), json...), pairs...) }
	for _, tc := range []struct {
		name string
		x    exchange
		want Encoding
		vary bool // Vary: Accept-Encoding expected
	}{
		{"compressed", exchange{accept: "gzip, br, zstd", header: json, body: text}, Zstd, true},
		{"the client's choice", exchange{accept: "gzip", header: json, body: text}, Gzip, true},
		{"two Accept-Encoding fields", exchange{accept: "zstd;q=0.1", reqHeader: []string{"Accept-Encoding", "br"}, header: json, body: text}, Brotli, true},
		{"not asked", exchange{header: json, body: text}, Identity, true},
		{"refused", exchange{accept: "gzip;q=0, br;q=0, zstd;q=0", header: json, body: text}, Identity, true},
		{"text/* wildcard", exchange{accept: "br", header: []string{"Content-Type", "text/html; charset=utf-8"}, body: text}, Brotli, true},
		{"type case", exchange{accept: "br", header: []string{"Content-Type", "IMAGE/svg+xml"}, body: text}, Brotli, true},
		{"other type", exchange{accept: "br", header: []string{"Content-Type", "image/png"}, body: text}, Identity, false},
		{"no type", exchange{accept: "br", body: text}, Identity, false},
		{"type prefix is not a match", exchange{accept: "br", header: []string{"Content-Type", "application/jsonx"}, body: text}, Identity, false},
		{"404", exchange{accept: "br", code: 404, header: json, body: text}, Identity, false},
		{"301", exchange{accept: "br", code: 301, header: json, body: text}, Identity, false},
		{"204", exchange{accept: "br", code: 204, header: json}, Identity, false},
		{"206", exchange{accept: "br", code: 206, header: with("Content-Range", "bytes 0-3999/8000"), body: text}, Identity, false},
		{"Range request", exchange{accept: "br", reqHeader: []string{"Range", "bytes=0-"}, header: json, body: text}, Identity, true},
		{"already encoded", exchange{accept: "br", header: with("Content-Encoding", "gzip"), body: text}, Identity, false},
		{"no-transform", exchange{accept: "br", header: with("Cache-Control", "public, No-Transform"), body: text}, Identity, false},
		{"other directives", exchange{accept: "br", header: with("Cache-Control", "max-age=60, no-transformer"), body: text}, Brotli, true},
		{"below min_size", exchange{accept: "br", header: json, body: text[:1023]}, Identity, false},
		{"at min_size", exchange{accept: "br", header: json, body: text[:1024]}, Brotli, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, stats := testPolicy()
			ctx := tc.x.ctx()
			p.Apply(ctx)
			h := &ctx.Response.Header
			got := string(h.ContentEncoding())
			want := ""
			if tc.want != Identity {
				want = tc.want.String()
			} else if tc.name == "already encoded" {
				want = "gzip" // the backend's
			}
			if got != want {
				t.Errorf("Content-Encoding %q, want %q", got, want)
			}
			if v := string(h.Peek("Vary")); (v == "Accept-Encoding") != tc.vary {
				t.Errorf("Vary %q, want it: %v", v, tc.vary)
			}
			b := body(t, &ctx.Response)
			if tc.want != Identity {
				if h.ContentLength() != len(b) {
					t.Errorf("Content-Length %d for %d bytes", h.ContentLength(), len(b))
				}
				if s := stats[tc.want]; s.Responses.Load() != 1 || s.BytesIn.Load() != uint64(len(tc.x.body)) || s.BytesOut.Load() != uint64(len(b)) {
					t.Errorf("stats %d %d %d", s.Responses.Load(), s.BytesIn.Load(), s.BytesOut.Load())
				}
			}
			if d := decode(t, tc.want, b); !bytes.Equal(d, tc.x.body) {
				t.Errorf("decoded %d bytes, not the %d sent", len(d), len(tc.x.body))
			}
		})
	}
}

// TestApplyMinSizeZero: min_size 0 compresses every size but nothing.
func TestApplyMinSizeZero(t *testing.T) {
	p := New(Config{Algorithms: []string{"gzip"}, Types: []string{"text/plain"}}, nil)
	for _, b := range []string{"", "x"} {
		ctx := exchange{accept: "gzip", header: []string{"Content-Type", "text/plain"}, body: []byte(b)}.ctx()
		p.Apply(ctx)
		if got := string(ctx.Response.Header.ContentEncoding()); (got == "gzip") != (b != "") {
			t.Errorf("%d-byte body: Content-Encoding %q", len(b), got)
		}
	}
}

func TestApplyHeaders(t *testing.T) {
	text := testBody(4000)
	for _, tc := range []struct {
		name       string
		header     []string
		vary, etag string
	}{
		{"strong ETag made weak", []string{"ETag", `"abc"`}, "Accept-Encoding", `W/"abc"`},
		{"weak ETag kept", []string{"ETag", `W/"abc"`}, "Accept-Encoding", `W/"abc"`},
		{"Vary merged", []string{"Vary", "Origin"}, "Origin, Accept-Encoding", ""},
		{"Vary naming it kept", []string{"Vary", "accept-encoding, Origin"}, "accept-encoding, Origin", ""},
		{"Vary * kept", []string{"Vary", "*"}, "*", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := testPolicy()
			ctx := exchange{accept: "gzip", header: append([]string{"Content-Type", "text/plain"}, tc.header...), body: text}.ctx()
			p.Apply(ctx)
			h := &ctx.Response.Header
			if v := string(h.Peek("Vary")); v != tc.vary {
				t.Errorf("Vary %q, want %q", v, tc.vary)
			}
			if v := string(h.Peek("ETag")); v != tc.etag {
				t.Errorf("ETag %q, want %q", v, tc.etag)
			}
		})
	}
	// Several Vary fields: one more.
	p, _ := testPolicy()
	ctx := exchange{accept: "gzip", header: []string{"Content-Type", "text/plain", "Vary", "Origin", "Vary", "Cookie"}, body: text}.ctx()
	p.Apply(ctx)
	if v := ctx.Response.Header.PeekAll("Vary"); len(v) != 3 || string(v[2]) != "Accept-Encoding" {
		t.Errorf("Vary %q", v)
	}
}

func TestApplyHead(t *testing.T) {
	p, stats := testPolicy()
	ctx := exchange{method: "HEAD", accept: "br", header: []string{"Content-Type", "text/css", "ETag", `"v1"`}, body: testBody(5000)}.ctx()
	p.Apply(ctx)
	h := &ctx.Response.Header
	if string(h.ContentEncoding()) != "br" || string(h.Peek("Vary")) != "Accept-Encoding" || string(h.Peek("ETag")) != `W/"v1"` {
		t.Errorf("head: %s", h.Header())
	}
	if h.ContentLength() >= 0 || len(ctx.Response.Body()) != 0 {
		t.Errorf("Content-Length %d, body %d bytes: a GET's compressed length is not known", h.ContentLength(), len(ctx.Response.Body()))
	}
	if s := stats[Brotli]; s.BytesIn.Load() != 0 || s.BytesOut.Load() != 0 {
		t.Errorf("a HEAD counted bytes: %d %d", s.BytesIn.Load(), s.BytesOut.Load())
	}
	// A short one is not compressed, as its GET would not be.
	ctx = exchange{method: "HEAD", accept: "br", header: []string{"Content-Type", "text/css"}, body: testBody(500)}.ctx()
	p.Apply(ctx)
	if len(ctx.Response.Header.ContentEncoding()) > 0 || ctx.Response.Header.ContentLength() != 500 {
		t.Errorf("short head: %s", ctx.Response.Header.Header())
	}
}

// closeRecorder is a streamed body that records its close.
type closeRecorder struct {
	io.Reader
	closed int
	err    error
}

func (c *closeRecorder) CloseWithError(err error) error {
	c.closed++
	c.err = err
	return nil
}

func TestApplyStream(t *testing.T) {
	text := testBody(1 << 20)
	for _, e := range allPrefs {
		t.Run(e.String(), func(t *testing.T) {
			p, stats := testPolicy()
			src := &closeRecorder{Reader: bytes.NewReader(text)}
			ctx := exchange{accept: e.String(), header: []string{"Content-Type", "application/json", "Content-Length", "1048576"}, stream: src, streamLen: len(text)}.ctx()
			p.Apply(ctx)
			if ctx.Response.Header.ContentLength() != -1 {
				t.Errorf("Content-Length %d: want none (chunked)", ctx.Response.Header.ContentLength())
			}
			if src.closed != 0 {
				t.Fatal("the source was closed when the stream was wrapped")
			}
			b := body(t, &ctx.Response)
			if src.closed != 1 {
				t.Errorf("source closed %d times", src.closed)
			}
			if d := decode(t, e, b); !bytes.Equal(d, text) {
				t.Errorf("decoded %d bytes, not the %d sent", len(d), len(text))
			}
			s := stats[e]
			if s.BytesIn.Load() != uint64(len(text)) || s.BytesOut.Load() != uint64(len(b)) {
				t.Errorf("bytes in %d out %d, want %d %d", s.BytesIn.Load(), s.BytesOut.Load(), len(text), len(b))
			}
			t.Logf("%s: 1 MiB streamed to %d bytes", e, len(b))
		})
	}
	// A stream whose known length is short is not compressed; one of
	// unknown length is.
	p, _ := testPolicy()
	ctx := exchange{accept: "gzip", header: []string{"Content-Type", "text/plain"}, stream: bytes.NewReader(text[:100]), streamLen: 100}.ctx()
	p.Apply(ctx)
	if len(ctx.Response.Header.ContentEncoding()) > 0 {
		t.Error("a 100-byte stream was compressed")
	}
	ctx = exchange{accept: "gzip", header: []string{"Content-Type", "text/plain"}, stream: bytes.NewReader(text[:100]), streamLen: -1}.ctx()
	p.Apply(ctx)
	if string(ctx.Response.Header.ContentEncoding()) != "gzip" {
		t.Error("a stream of unknown length was not compressed")
	}
	if d := decode(t, Gzip, body(t, &ctx.Response)); !bytes.Equal(d, text[:100]) {
		t.Errorf("decoded %q", d)
	}
}

// pieces is a body that comes in pieces, each when the test sends it.
type pieces chan []byte

func (p pieces) Read(b []byte) (int, error) {
	piece, ok := <-p
	if !ok {
		return 0, io.EOF
	}
	return copy(b, piece), nil
}

// TestStreamFlushesEachPiece: each piece the backend sends reaches the
// client decodable before the next arrives (events, long polls).
func TestStreamFlushesEachPiece(t *testing.T) {
	for _, e := range allPrefs {
		t.Run(e.String(), func(t *testing.T) {
			src := make(pieces)
			s := takeStream(src, e, nil)
			coded, plain := io.Pipe()
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				buf := make([]byte, 4096)
				for {
					n, err := s.Read(buf)
					plain.Write(buf[:n])
					if err != nil {
						plain.CloseWithError(err)
						return
					}
				}
			}()
			defer func() {
				// The Stream is the reader's until its source ends.
				close(src)
				go io.Copy(io.Discard, coded)
				<-readerDone
				s.CloseWithError(nil)
			}()
			var dec io.Reader
			decoded := make(chan string, 1)
			for i := range 3 {
				piece := fmt.Sprintf("data: event %d\n\n", i)
				src <- []byte(piece)
				go func() {
					if dec == nil {
						switch e {
						case Gzip:
							zr, err := gzip.NewReader(coded)
							if err != nil {
								decoded <- err.Error()
								return
							}
							dec = zr
						case Brotli:
							dec = brotli.NewReader(coded)
						case Zstd:
							zr, _ := zstd.NewReader(coded)
							dec = zr
						}
					}
					got := make([]byte, len(piece))
					if _, err := io.ReadFull(dec, got); err != nil {
						decoded <- err.Error()
						return
					}
					decoded <- string(got)
				}()
				select {
				case got := <-decoded:
					if got != piece {
						t.Fatalf("piece %d decoded as %q", i, got)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("piece %d was not flushed", i)
				}
			}
		})
	}
}

// TestEncoderMemory measures what one pooled encoder holds once it has
// compressed a body, the memory each streaming response adds (with its
// 16 KiB input buffer and the coded bytes of one piece).
func TestEncoderMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("measures memory")
	}
	text := testBody(1 << 20)

	for _, e := range allPrefs {
		const n = 8
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		encs := make([]encoder, n)
		for i := range encs {
			// As a Stream uses it: a piece at a time, each flushed.
			encs[i] = encoders[e].New().(encoder)
			encs[i].Reset(io.Discard)
			for p := text; len(p) > 0; p = p[min(len(p), inChunk):] {
				encs[i].Write(p[:min(len(p), inChunk)])
				encs[i].Flush()
			}
			encs[i].Close()
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := (after.HeapAlloc - before.HeapAlloc) / n
		runtime.KeepAlive(encs)
		t.Logf("%s: %d KiB per encoder", e, per>>10)
		if int64(per) > encoderMemory[e] {
			t.Errorf("%s: %d KiB per encoder, more than the %d KiB counted for it", e, per>>10, encoderMemory[e]>>10)
		}
	}
}

// BenchmarkCompress compresses 1 MiB of JSON-like text with each
// coding, as a streamed body is (pieces of 16 KiB, each flushed) and as
// a whole body is: MB/s is the inverse of CPU per MB, and "ratio" the
// coded size over the original.
func BenchmarkCompress(b *testing.B) {
	text := testBody(1 << 20)
	for _, e := range allPrefs {
		b.Run(e.String()+"/stream", func(b *testing.B) {
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			var out int
			for b.Loop() {
				s := takeStream(bytes.NewReader(text), e, nil)
				out = 0
				for {
					n, err := s.Read(buf)
					out += n
					if err != nil {
						break
					}
				}
				s.CloseWithError(nil)
			}
			b.ReportMetric(float64(out)/float64(len(text)), "ratio")
		})
		b.Run(e.String()+"/whole-64KiB", func(b *testing.B) {
			whole := text[:64<<10]
			b.SetBytes(int64(len(whole)))
			b.ReportAllocs()
			var resp fasthttp.Response
			for b.Loop() {
				resp.SetBody(whole)
				compressWhole(&resp, e, nil)
			}
			b.ReportMetric(float64(len(resp.Body()))/float64(len(whole)), "ratio")
		})
	}
}
