package h2

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headBlock decodes the header blocks of one connection (a HEADERS frame
// and its CONTINUATIONs) straight into the HTTP/1.1 head of the request
// each stands for. It makes the checks golang.org/x/net's MetaHeadersFrame
// makes (field names and values, pseudo-fields first, known and not
// repeated, the header list size) without building a list of fields:
// once a client's fields are in the dynamic table, decoding a request
// allocates nothing.
type headBlock struct {
	dec     *hpack.Decoder
	maxList uint32

	// The block being decoded.
	head       []byte // the request line (once known) and fields
	cookies    []byte // cookie values joined with "; " (RFC 9113 8.2.3)
	method     string
	path       string
	scheme     string
	authority  string // :authority, else the first host field
	pseudo     int    // pseudo-fields seen
	pseudoSeen uint8  // which, to refuse repeats
	sawRegular bool   // a regular field came, and the request line is written
	// invalid: a field x/net refuses as it decodes (a bad name or value,
	// a pseudo-field after a regular one); the rest of the block is
	// decoded for the table only. badPseudo: an unknown or repeated
	// pseudo-field, which x/net refuses once the block is decoded. Either
	// resets the stream whatever it is (refused).
	invalid   bool
	badPseudo bool
	// malformed: a field an HTTP/2 request must not carry, or an
	// unusable content-length; trailers may.
	malformed bool
	truncated bool // past the header list size: 431
	remain    uint32
	trailers  uint32 // the separate budget of "trailer" fields
	hd        headInfo
}

const (
	pseudoMethod = 1 << iota
	pseudoPath
	pseudoScheme
	pseudoAuthority
)

func newHeadBlock(maxList uint32) *headBlock {
	b := &headBlock{maxList: maxList}
	b.dec = hpack.NewDecoder(4096, b.field)
	b.dec.SetMaxStringLength(int(maxList))
	return b
}

// start readies b for a new block, writing into head.
func (b *headBlock) start(head []byte) {
	*b = headBlock{dec: b.dec, maxList: b.maxList, head: head[:0], cookies: b.cookies[:0],
		remain: b.maxList, trailers: b.maxList, hd: headInfo{declared: -1}}
	b.dec.SetEmitEnabled(true)
}

// decode reads the block that starts with f, and the CONTINUATION frames
// that follow it from fr. A connection error means the block could not be
// decoded, or was so far over the limits that it is not worth decoding.
func (b *headBlock) decode(f *http2.HeadersFrame, fr *http2.Framer) error {
	frag, ended := f.HeaderBlockFragment(), f.HeadersEnded()
	for {
		// As x/net: a fragment over twice the budget left, or more
		// fragments after an invalid field, end the connection.
		if int64(len(frag)) > 2*int64(b.remain+b.trailers) || b.invalid {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := b.dec.Write(frag); err != nil {
			return http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		next, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		c := next.(*http2.ContinuationFrame) // the Framer checks the order
		frag, ended = c.HeaderBlockFragment(), c.HeadersEnded()
	}
	if err := b.dec.Close(); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	return nil
}

// field is the decoder's emit function.
func (b *headBlock) field(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		b.stop()
		return
	}
	if strings.HasPrefix(hf.Name, ":") {
		if b.sawRegular {
			b.stop()
			return
		}
		b.pseudoField(hf)
		return
	}
	if !b.sawRegular {
		b.sawRegular = true
		b.requestLine()
	}
	if !validWireName(hf.Name) {
		b.stop()
		return
	}
	budget, size := &b.remain, hf.Size()
	if hf.Name == "trailer" {
		// As x/net counts a Trailer field: each name it lists as a
		// field of its own.
		n := uint32(strings.Count(hf.Value, ",") + 1)
		budget, size = &b.trailers, uint32(len(hf.Value))-n+1+n*32
	}
	if size > *budget {
		b.truncated = true
		b.remain, b.trailers = 0, 0
		b.dec.SetEmitEnabled(false)
		return
	}
	*budget -= size
	b.regularField(hf.Name, hf.Value)
}

// refused: the stream must be reset, whatever it is.
func (b *headBlock) refused() bool { return b.invalid || b.badPseudo }

// stop marks the block invalid; the rest is decoded for the table only.
func (b *headBlock) stop() {
	b.invalid = true
	b.dec.SetEmitEnabled(false)
}

func (b *headBlock) pseudoField(hf hpack.HeaderField) {
	if size := hf.Size(); size <= b.remain {
		b.remain -= size
	} else {
		b.truncated = true
		b.remain, b.trailers = 0, 0
		b.dec.SetEmitEnabled(false)
		return
	}
	b.pseudo++
	var bit uint8
	switch hf.Name {
	case ":method":
		bit, b.method = pseudoMethod, hf.Value
	case ":path":
		bit, b.path = pseudoPath, hf.Value
	case ":scheme":
		bit, b.scheme = pseudoScheme, hf.Value
	case ":authority":
		bit, b.authority = pseudoAuthority, hf.Value
	case ":protocol":
		// Extended CONNECT is not offered.
		b.malformed = true
	default: // :status is a response's
		b.badPseudo = true
		return
	}
	if b.pseudoSeen&bit != 0 {
		b.badPseudo = true
	}
	b.pseudoSeen |= bit
}

func (b *headBlock) requestLine() {
	b.head = append(b.head, b.method...)
	b.head = append(b.head, ' ')
	b.head = append(b.head, b.path...)
	b.head = append(b.head, " HTTP/1.1\r\n"...)
}

func (b *headBlock) regularField(name, value string) {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		// Connection-specific: malformed in HTTP/2.
		b.malformed = true
		return
	case "te":
		if value != "trailers" {
			b.malformed = true
		}
		return // dropped with the other hop-by-hop fields, as on HTTP/1.1
	case "content-length":
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil || n < 0 || (b.hd.declared >= 0 && b.hd.declared != n) {
			b.malformed = true
		} else {
			b.hd.declared = n
		}
		return // written from the body received
	case "host":
		if b.authority == "" {
			b.authority = value
		}
		return
	case "expect":
		// Answered here; the backend gets the whole body at once.
		if strings.EqualFold(value, "100-continue") {
			b.hd.continue_ = true
			return
		}
	case "cookie":
		// HTTP/2 may split cookies over several fields; HTTP/1.1 wants
		// one (RFC 9113 section 8.2.3).
		if len(b.cookies) > 0 {
			b.cookies = append(b.cookies, "; "...)
		}
		b.cookies = append(b.cookies, value...)
		return
	}
	b.head = appendField(b.head, name, value)
}

// request checks the decoded block as a request and writes the request
// it stands for into ctx.Request, as fasthttp would have parsed it off an
// HTTP/1.1 connection. errMalformed means the stream must be reset; other
// errors are answered by Handler.ServeError.
func (b *headBlock) request(ctx *fasthttp.RequestCtx, s *Server) (headInfo, error) {
	if b.malformed || !httpguts.ValidHeaderFieldName(b.method) { // a token (RFC 9110 section 9.1)
		return b.hd, errMalformed
	}
	if b.method == fasthttp.MethodConnect {
		if b.scheme != "" || b.path != "" || b.authority == "" {
			return b.hd, errMalformed
		}
		// Tunnels are not proxied: httphead.Check answers 405.
		ctx.Request.Header.SetMethod(b.method)
		return b.hd, nil
	}
	if b.scheme == "" || !validPath(b.path) {
		return b.hd, errMalformed
	}
	if b.truncated {
		return b.hd, ErrHeadTooLarge
	}
	if !b.sawRegular { // else written at the first regular field
		b.requestLine()
	}
	if len(b.cookies) > 0 {
		b.head = append(b.head, "cookie: "...)
		b.head = append(b.head, b.cookies...)
		b.head = append(b.head, "\r\n"...)
	}
	if b.authority != "" {
		b.head = appendField(b.head, "host", b.authority)
	}
	b.head = append(b.head, "\r\n"...)
	if len(b.head) > s.o.MaxHead {
		return b.hd, ErrHeadTooLarge
	}
	if s.o.MaxBody > 0 && b.hd.declared > int64(s.o.MaxBody) {
		return b.hd, fasthttp.ErrBodyTooLarge
	}
	hr := s.readers.Get().(*headReader)
	hr.r.Reset(b.head)
	hr.br.Reset(&hr.r)
	err := ctx.Request.Header.Read(hr.br)
	hr.r.Reset(nil)
	s.readers.Put(hr)
	return b.hd, err
}

// fieldLines returns the regular fields of the block decoded, as
// "name: value\r\n" lines, for a block of trailers: those a request's
// head takes apart (host, cookie, content-length, te, expect:
// 100-continue) and the connection-specific ones are not among them,
// nor could they be trailers. Valid until the next block.
func (b *headBlock) fieldLines() []byte {
	// What is written before the first field is the request line.
	if i := bytes.IndexByte(b.head, '\n'); i >= 0 {
		return b.head[i+1:]
	}
	return nil
}

// validWireName: a field name as HTTP/2 sends it, a token in lower case.
func validWireName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 || !httpguts.IsTokenRune(rune(c)) || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// headInfo is what a request's header block says besides its head.
type headInfo struct {
	declared  int64 // content-length, -1 if none
	continue_ bool  // expect: 100-continue
}

// headReader reads a request head written out in memory, as fasthttp
// reads one off a connection.
type headReader struct {
	r  bytes.Reader
	br *bufio.Reader
}

// validPath: a non-empty request target without spaces or control
// characters, which the HTTP/1.1 request line it goes into could not hold.
func validPath(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	b = append(b, v...)
	return append(b, "\r\n"...)
}

// headBufPool holds the buffers request heads are written into.
var headBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}
