package l4

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrNotTLS means a connection that should start with a TLS ClientHello
// does not.
var ErrNotTLS = errors.New("l4: not a TLS ClientHello")

// maxHello bounds the ClientHello PeekServerName reads: a record's
// largest payload. Post-quantum key shares make hellos of about 1.5 KiB.
const maxHello = 16 << 10

// PeekServerName reads the server name (SNI) of the TLS ClientHello at
// the start of br without consuming it, so that the stream can be
// forwarded untouched. It returns "" for a hello without one. The caller
// bounds the wait with a read deadline; br must be able to buffer
// maxHello+5 bytes per record.
// https://www.rfc-editor.org/rfc/rfc8446#section-4.1.2,
// https://www.rfc-editor.org/rfc/rfc6066#section-3
func PeekServerName(br *bufio.Reader) (string, error) {
	// The hello may be split across records: collect their payloads.
	var msg []byte
	off := 0
	for {
		hdr, err := br.Peek(off + 5)
		if err != nil {
			if off == 0 && len(hdr) > 0 && hdr[0] != 0x16 {
				return "", ErrNotTLS
			}
			return "", err
		}
		rec := hdr[off:]
		if rec[0] != 0x16 || rec[1] != 3 { // handshake, TLS 1.x
			return "", ErrNotTLS
		}
		n := int(binary.BigEndian.Uint16(rec[3:5]))
		if n == 0 || n > maxHello {
			return "", fmt.Errorf("%w: record length %d", ErrNotTLS, n)
		}
		if off+5+n > br.Size() {
			return "", fmt.Errorf("%w: ClientHello too large", ErrNotTLS)
		}
		all, err := br.Peek(off + 5 + n)
		if err != nil {
			return "", err
		}
		msg = append(msg, all[off+5:]...)
		off += 5 + n
		if len(msg) >= 4 {
			if msg[0] != 1 { // client_hello
				return "", fmt.Errorf("%w: handshake type %d", ErrNotTLS, msg[0])
			}
			hl := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if hl > maxHello {
				return "", fmt.Errorf("%w: ClientHello of %d bytes", ErrNotTLS, hl)
			}
			if len(msg) >= 4+hl {
				return parseHello(msg[4 : 4+hl])
			}
		}
	}
}

// parseHello finds the host_name of the server_name extension in a
// ClientHello body.
func parseHello(b []byte) (string, error) {
	bad := func(what string) (string, error) {
		return "", fmt.Errorf("%w: %s", ErrNotTLS, what)
	}
	if len(b) < 2+32+1 {
		return bad("short hello")
	}
	b = b[2+32:] // legacy_version, random
	sid := int(b[0])
	if len(b) < 1+sid+2 {
		return bad("short session id")
	}
	b = b[1+sid:]
	cs := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+cs+1 {
		return bad("short cipher suites")
	}
	b = b[2+cs:]
	comp := int(b[0])
	if len(b) < 1+comp {
		return bad("short compression methods")
	}
	b = b[1+comp:]
	if len(b) == 0 {
		return "", nil // no extensions
	}
	if len(b) < 2 {
		return bad("short extensions")
	}
	ext := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < ext {
		return bad("extensions overrun")
	}
	b = b[:ext]
	for len(b) >= 4 {
		typ, l := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+l {
			return bad("extension overrun")
		}
		data := b[4 : 4+l]
		b = b[4+l:]
		if typ != 0 { // server_name
			continue
		}
		if len(data) < 2 {
			return bad("short server_name")
		}
		list := data[2:]
		if int(binary.BigEndian.Uint16(data)) != len(list) {
			return bad("server_name list length")
		}
		for len(list) >= 3 {
			nt, nl := list[0], int(binary.BigEndian.Uint16(list[1:]))
			if len(list) < 3+nl {
				return bad("server name overrun")
			}
			if nt == 0 { // host_name
				name := string(list[3 : 3+nl])
				if !validSNI(name) {
					return bad("invalid host name")
				}
				return strings.ToLower(strings.TrimSuffix(name, ".")), nil
			}
			list = list[3+nl:]
		}
		return "", nil
	}
	if len(b) != 0 {
		return bad("trailing bytes in extensions")
	}
	return "", nil
}

func validSNI(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// MatchSNI reports whether name matches a route pattern: exact, or
// "*.example.com" for any name below example.com.
func MatchSNI(pattern, name string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return len(name) > len(suffix) && strings.HasSuffix(name, suffix)
	}
	return pattern == name
}
