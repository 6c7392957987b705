package httphead

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// CleanResponse removes a backend's hop-by-hop headers from its response
// (RFC 9110 section 7.6.1), and every header its Connection names.
func CleanResponse(h *fasthttp.ResponseHeader) {
	var mask Mask
	conn := 0
	for k := range h.All() {
		switch len(k) {
		case 7:
			if string(k) == "Upgrade" {
				mask |= hopUpgrade
			}
		case 10:
			switch string(k) {
			case "Connection":
				mask |= hopConnection
				if conn++; conn > 1 {
					mask |= hopManyConnection
				}
			case "Keep-Alive":
				mask |= hopKeepAlive
			}
		case 16:
			if string(k) == "Proxy-Connection" {
				mask |= hopProxyConnection
			}
		}
	}
	if mask == 0 {
		return
	}
	dropCommon(h, mask)
	if mask&hopUpgrade != 0 {
		h.Del("Upgrade")
	}
}

// plainConnection reports a Connection value that names no other header:
// "keep-alive" or "close", the common cases, handled without allocating.
func plainConnection(v []byte) bool {
	return bytes.EqualFold(v, []byte("keep-alive")) || bytes.EqualFold(v, []byte("close"))
}

// headerEditor is what request and response headers have in common.
type headerEditor interface {
	Peek(key string) []byte
	PeekAll(key string) [][]byte
	Del(key string)
	DelBytes(key []byte)
}

// dropCommon removes Connection (and every header it names, which is
// hop-by-hop too), Keep-Alive and Proxy-Connection. The common
// "Connection: keep-alive" takes a path that does not allocate.
func dropCommon(h headerEditor, mask Mask) {
	if mask&hopConnection != 0 && (mask&hopManyConnection != 0 || !plainConnection(h.Peek("Connection"))) {
		// Copy the values: deleting headers moves the storage they are in.
		var tmp [128]byte
		conn := tmp[:0]
		for _, v := range h.PeekAll("Connection") {
			conn = append(append(conn, v...), ',')
		}
		for len(conn) > 0 {
			var tok []byte
			tok, conn, _ = bytes.Cut(conn, []byte{','})
			if tok = bytes.TrimSpace(tok); len(tok) > 0 {
				h.DelBytes(tok)
			}
		}
	}
	dropMarked(h, mask, commonHops[:])
}

// markedField is a field name and the bit of a Mask that says a head
// has it.
type markedField struct {
	bit  Mask
	name string
}

// commonHops are the hop-by-hop fields requests and responses share,
// Connection's list aside.
var commonHops = [...]markedField{
	{hopConnection, "Connection"},
	{hopKeepAlive, "Keep-Alive"},
	{hopProxyConnection, "Proxy-Connection"},
}

// dropMarked removes each of fields whose bit mask has.
func dropMarked(h headerEditor, mask Mask, fields []markedField) {
	for _, f := range fields {
		if mask&f.bit != 0 {
			h.Del(f.name)
		}
	}
}
