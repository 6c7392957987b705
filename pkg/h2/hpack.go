package h2

import (
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/internal/httpstatus"
)

// encodeHead writes the HPACK block of resp's head to c.hbuf: :status,
// the fields in lower case, and content-length unless the status has no
// body or the length is unknown (cl < 0).
func (c *conn) encodeHead(resp *fasthttp.Response, cl int) []byte {
	code := resp.StatusCode()
	b := appendStatus(c.hbuf[:0], code)
	for k, v := range resp.Header.All() {
		// Hop-by-hop fields went in httphead.CleanResponse; the framing is
		// HTTP/2's own.
		if string(k) == "Content-Length" || string(k) == "Transfer-Encoding" || string(k) == "Connection" {
			continue
		}
		c.scratch = append(c.scratch[:0], k...)
		for i, ch := range c.scratch {
			if 'A' <= ch && ch <= 'Z' {
				c.scratch[i] = ch + 'a' - 'A'
			}
		}
		if idx := hpackNameIndex(c.scratch); idx > 0 {
			b = appendHPACKInt(b, 0, 4, idx) // literal, indexed name
		} else {
			b = append(b, 0) // literal, new name
			b = appendHPACKString(b, c.scratch)
		}
		b = appendHPACKString(b, v)
	}
	if cl >= 0 && !httpstatus.NoBody(code) {
		var num [20]byte
		b = appendHPACKInt(b, 0, 4, hpackContentLength)
		b = appendHPACKString(b, strconv.AppendInt(num[:0], int64(cl), 10))
	}
	c.hbuf = b
	return b
}

// lb writes header blocks itself (RFC 7541): fields as literals without
// indexing and without Huffman coding, with names (and :status) from the
// static table when they are there. That costs a few bytes per response against the
// smallest encoding, saves the table lookups and Huffman coding on every
// response (as HAProxy's encoder does), and leaves nothing to keep in
// step with the client.

// Static table indexes (RFC 7541 appendix A).
const (
	hpackStatus        = 8
	hpackContentLength = 28
)

// hpackNameIndex is the static table index of a response field name lb
// passes on often, 0 for others.
func hpackNameIndex(name []byte) int {
	switch string(name) {
	case "age":
		return 21
	case "cache-control":
		return 24
	case "content-encoding":
		return 26
	case "content-type":
		return 31
	case "date":
		return 33
	case "etag":
		return 34
	case "expires":
		return 36
	case "last-modified":
		return 44
	case "location":
		return 46
	case "server":
		return 54
	case "set-cookie":
		return 55
	case "strict-transport-security":
		return 56
	case "vary":
		return 59
	}
	return 0
}

// appendStatus appends :status: indexed for the codes the static table
// has, a literal with the indexed name otherwise.
func appendStatus(b []byte, code int) []byte {
	idx := 0
	switch code {
	case 200:
		idx = 8
	case 204:
		idx = 9
	case 206:
		idx = 10
	case 304:
		idx = 11
	case 400:
		idx = 12
	case 404:
		idx = 13
	case 500:
		idx = 14
	}
	if idx > 0 {
		return appendHPACKInt(b, 0x80, 7, idx)
	}
	var num [20]byte
	b = appendHPACKInt(b, 0, 4, hpackStatus)
	return appendHPACKString(b, strconv.AppendInt(num[:0], int64(code), 10))
}

// appendHPACKString appends a string literal, not Huffman coded.
func appendHPACKString(b, s []byte) []byte {
	b = appendHPACKInt(b, 0, 7, len(s))
	return append(b, s...)
}

// appendHPACKInt appends v as an integer with an n-bit prefix, the bits
// above the prefix in the first byte taken from first (RFC 7541 5.1).
func appendHPACKInt(b []byte, first byte, n uint, v int) []byte {
	limit := 1<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	for v -= limit; v >= 128; v >>= 7 {
		b = append(b, byte(v&127|128))
	}
	return append(b, byte(v))
}
