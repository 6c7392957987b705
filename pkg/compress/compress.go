// Package compress compresses responses for clients that accept it
// ([listener.compress]): it picks a coding from the request's
// Accept-Encoding and the listener's preference (Negotiate), decides
// whether a response may be compressed (Policy.Apply), and compresses
// it, whole when lb holds the whole body and piece by piece as it
// streams otherwise (Stream), with pooled encoders whose windows keep
// each response's memory small. It knows nothing of routing or backends:
// pkg/proxy calls Apply once a response's head is known.
package compress

import (
	"bytes"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/bodymem"
	"github.com/offloadlb/lb/pkg/metrics"
)

// Config is a listener's [listener.compress], validated (pkg/config).
type Config struct {
	// Algorithms are the codings to use, in the server's order of
	// preference: "zstd", "br", "gzip".
	Algorithms []string
	// Types are the media types to compress ("application/json"), or
	// "type/*" for all of a type ("text/*").
	Types []string
	// MinSize is the smallest body compressed, in bytes, when its
	// length is known.
	MinSize int64
}

// Policy is one listener's compression: which responses, with which
// codings, and its counters. It is immutable once built and safe for
// concurrent use; a nil *Policy compresses nothing (and Apply must not
// be called on it).
type Policy struct {
	algorithms []Encoding
	exact      [][]byte // lower-case media types
	prefixes   [][]byte // "text/" for "text/*"
	minSize    int
	stats      [numEncodings]*metrics.Compression
}

// New builds a listener's policy from cfg, which pkg/config has
// validated (an unknown algorithm is skipped), with stats giving each
// coding's counters (nil for none).
func New(cfg Config, stats func(Encoding) *metrics.Compression) *Policy {
	p := &Policy{minSize: int(cfg.MinSize)}
	for _, a := range cfg.Algorithms {
		if e, ok := ParseEncoding(a); ok {
			p.algorithms = append(p.algorithms, e)
			if stats != nil {
				p.stats[e] = stats(e)
			}
		}
	}
	for _, t := range cfg.Types {
		t = strings.ToLower(strings.TrimSpace(t))
		if prefix, ok := strings.CutSuffix(t, "/*"); ok {
			p.prefixes = append(p.prefixes, []byte(prefix+"/"))
		} else {
			p.exact = append(p.exact, []byte(t))
		}
	}
	return p
}

// Header names in fasthttp's canonical form.
var (
	hRange          = []byte("Range")
	hVary           = []byte("Vary")
	hETag           = []byte("Etag")
	vAcceptEncoding = []byte("Accept-Encoding")
	encodingValues  = [numEncodings][]byte{}
)

func init() {
	for e := range encodingValues {
		encodingValues[e] = []byte(Encoding(e).String())
	}
}

// Apply compresses the response in ctx when the policy allows and the
// client accepts it. Compressed are 2xx answers but 204, 205 and 206
// whose Content-Type is one of the policy's types, that carry no
// Content-Encoding already and no Cache-Control: no-transform, and
// whose body is not empty and at least MinSize long when its length is
// known (a streamed body of unknown length is compressed). Such a response gets
// Vary: Accept-Encoding whether or not this client's is compressed: it
// varies by it. A request with Range is answered as it is. A compressed
// answer gets Content-Encoding, a weak ETag in place of a strong one (its
// bytes are not the backend's), and its body: a whole body compressed now
// (Content-Length its new length); a streamed one compressed as it is
// sent (no Content-Length: chunked, or HTTP/2 DATA); none for HEAD,
// whose head says what a GET's would. Apply belongs to the request's
// goroutine and is called once per response, after any cache has kept
// its copy (the cache holds identity bodies, compressed on the way out).
//
// Compressing holds an encoder, counted in the process's body memory
// (global.max_body_memory) until the body is compressed or, streamed,
// sent: while the process holds all it may, answers go uncompressed.
//
//go:noinline
func (p *Policy) Apply(ctx *fasthttp.RequestCtx) {
	resp := &ctx.Response
	h := &resp.Header
	head := ctx.IsHead()
	streamed := resp.IsBodyStream()
	size := h.ContentLength()
	if !streamed && !head {
		size = len(resp.Body())
	} else if head && size < 0 && len(resp.Body()) > 0 {
		size = len(resp.Body())
	}
	if !p.eligible(h, size) {
		return
	}
	addVary(h)
	req := &ctx.Request.Header
	if len(req.PeekBytes(hRange)) > 0 {
		return
	}
	e := NegotiateFields(req.PeekAll("Accept-Encoding"), p.algorithms)
	if e == Identity {
		return
	}
	if !head && !bodymem.Take(streamMemory(e)) {
		// The process holds all the body memory it may
		// (global.max_body_memory): this answer goes as it is.
		return
	}
	h.SetContentEncodingBytes(encodingValues[e])
	weakETag(h)
	stats := p.stats[e]
	if stats != nil {
		stats.Responses.Add(1)
	}
	switch {
	case head:
		// The length a GET's compressed body would have is not known.
		resp.ResetBody()
		h.SetContentLength(-1)
	case streamed:
		src := resp.BodyStream()
		// The response keeps its source open: the Stream closes it.
		resp.ReplaceBodyStream(newStream(src, e, stats), -1)
	default:
		compressWhole(resp, e, stats)
		bodymem.Give(streamMemory(e))
	}
}

// eligible applies the rules on the response alone: status, type,
// coding, no-transform and size (-1 for unknown).
func (p *Policy) eligible(h *fasthttp.ResponseHeader, size int) bool {
	code := h.StatusCode()
	if code < 200 || code > 299 || code == fasthttp.StatusNoContent ||
		code == fasthttp.StatusResetContent || code == fasthttp.StatusPartialContent {
		return false
	}
	if size == 0 || size > 0 && size < p.minSize {
		return false
	}
	if len(h.ContentEncoding()) > 0 || !p.matchType(h.ContentType()) {
		return false
	}
	for _, v := range h.PeekAll("Cache-Control") {
		if hasToken(v, "no-transform") {
			return false
		}
	}
	return true
}

// matchType reports whether the media type of a Content-Type value (the
// part before any parameter) is one of the policy's.
func (p *Policy) matchType(ct []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = trimOWS(ct)
	if len(ct) == 0 {
		return false
	}
	for _, t := range p.exact {
		if len(t) == len(ct) && hasPrefixFold(ct, t) {
			return true
		}
	}
	for _, t := range p.prefixes {
		if len(ct) > len(t) && hasPrefixFold(ct, t) {
			return true
		}
	}
	return false
}

// hasPrefixFold reports whether b starts with lower, ignoring ASCII case.
func hasPrefixFold(b, lower []byte) bool {
	if len(b) < len(lower) {
		return false
	}
	for i, c := range lower {
		x := b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if x != c {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated list holds token (before
// any "=value"), ignoring case.
func hasToken(list []byte, token string) bool {
	for len(list) > 0 {
		var elem []byte
		if i := indexByte(list, ','); i >= 0 {
			elem, list = list[:i], list[i+1:]
		} else {
			elem, list = list, nil
		}
		if i := indexByte(elem, '='); i >= 0 {
			elem = elem[:i]
		}
		if equalFold(trimOWS(elem), token) {
			return true
		}
	}
	return false
}

// addVary says the response varies by Accept-Encoding: in a Vary of
// its own, or added to the response's (a Vary of "*" or that names it
// already is left as it is).
func addVary(h *fasthttp.ResponseHeader) {
	vs := h.PeekAll("Vary")
	for _, v := range vs {
		if hasToken(v, "accept-encoding") || hasToken(v, "*") {
			return
		}
	}
	if len(vs) != 1 {
		// None, or several fields: one more is the same list (RFC
		// 9110 section 5.3).
		h.AddBytesKV(hVary, vAcceptEncoding)
		return
	}
	var buf [128]byte
	v := append(append(append(buf[:0], vs[0]...), ", "...), vAcceptEncoding...)
	h.SetCanonical(hVary, v)
}

// weakETag makes a strong ETag weak (RFC 9110 section 8.8.3): the
// compressed bytes are not the ones the backend tagged, and a range of
// them must not be asked for by it.
func weakETag(h *fasthttp.ResponseHeader) {
	v := h.PeekBytes(hETag)
	if len(v) == 0 || v[0] != '"' {
		return
	}
	var buf [128]byte
	h.SetCanonical(hETag, append(append(buf[:0], "W/"...), v...))
}

// wholeBufs holds the buffers whole bodies are compressed into.
var wholeBufs = sync.Pool{New: func() any { return new(outBuf) }}

// outBuf is an io.Writer appending to a byte slice.
type outBuf struct{ b []byte }

func (o *outBuf) Write(p []byte) (int, error) {
	o.b = append(o.b, p...)
	return len(p), nil
}

// compressWhole replaces a response's whole body with its coding by e.
func compressWhole(resp *fasthttp.Response, e Encoding, stats *metrics.Compression) {
	body := resp.Body()
	out := wholeBufs.Get().(*outBuf)
	out.b = out.b[:0]
	enc := getEncoder(e, out)
	_, err := enc.Write(body)
	if err == nil {
		err = enc.Close()
	}
	putEncoder(e, enc)
	if err == nil {
		// Encoders writing to memory do not fail; were one to, the body
		// would go out as it is, which the head must then say.
		if stats != nil {
			stats.BytesIn.Add(uint64(len(body)))
			stats.BytesOut.Add(uint64(len(out.b)))
		}
		resp.SetBody(out.b)
		resp.Header.SetContentLength(len(out.b))
	} else {
		resp.Header.SetContentEncodingBytes(nil)
	}
	if cap(out.b) <= 256<<10 {
		wholeBufs.Put(out)
	}
}
