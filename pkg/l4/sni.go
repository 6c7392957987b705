package l4

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrNotTLS means a connection that should start with a TLS ClientHello
// does not. PeekServerName wraps it with what was wrong; test with
// errors.Is.
var ErrNotTLS = errors.New("l4: not a TLS ClientHello")

// maxHello bounds the ClientHello PeekServerName reads: a record's
// largest payload. Post-quantum key shares make hellos of about 1.5 KiB.
const maxHello = 16 << 10

// PeekServerName reads the server name (SNI) of the TLS ClientHello at
// the start of br without consuming it, so that the stream can be
// forwarded untouched. It returns "" for a hello without one. The caller
// bounds the wait with a read deadline; br must be able to buffer
// maxHello+5 bytes per record. Any number of calls may run at once, each
// with its own br.
// https://www.rfc-editor.org/rfc/rfc8446#section-4.1.2,
// https://www.rfc-editor.org/rfc/rfc6066#section-3
func PeekServerName(br *bufio.Reader) (string, error) {
	// The hello may be split across records: collect their payloads.
	var msg []byte
	off := 0
	for {
		head, err := br.Peek(off + 5)
		if err != nil {
			if off == 0 && len(head) > 0 && head[0] != 0x16 {
				return "", ErrNotTLS
			}
			return "", err
		}
		record := head[off:]
		if record[0] != 0x16 || record[1] != 3 { // handshake, TLS 1.x
			return "", ErrNotTLS
		}
		n := int(binary.BigEndian.Uint16(record[3:5]))
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
			helloLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if helloLen > maxHello {
				return "", fmt.Errorf("%w: ClientHello of %d bytes", ErrNotTLS, helloLen)
			}
			if len(msg) >= 4+helloLen {
				return parseHello(msg[4 : 4+helloLen])
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
	sessionIDLen := int(b[0])
	if len(b) < 1+sessionIDLen+2 {
		return bad("short session id")
	}
	b = b[1+sessionIDLen:]
	suitesLen := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+suitesLen+1 {
		return bad("short cipher suites")
	}
	b = b[2+suitesLen:]
	compressionLen := int(b[0])
	if len(b) < 1+compressionLen {
		return bad("short compression methods")
	}
	b = b[1+compressionLen:]
	if len(b) == 0 {
		return "", nil // no extensions
	}
	if len(b) < 2 {
		return bad("short extensions")
	}
	extensionsLen := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < extensionsLen {
		return bad("extensions overrun")
	}
	b = b[:extensionsLen]
	for len(b) >= 4 {
		extType, extLen := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if len(b) < 4+extLen {
			return bad("extension overrun")
		}
		data := b[4 : 4+extLen]
		b = b[4+extLen:]
		if extType != 0 { // server_name
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
			nameType, nameLen := list[0], int(binary.BigEndian.Uint16(list[1:]))
			if len(list) < 3+nameLen {
				return bad("server name overrun")
			}
			if nameType == 0 { // host_name
				name := string(list[3 : 3+nameLen])
				if !validSNI(name) {
					return bad("invalid host name")
				}
				return strings.ToLower(strings.TrimSuffix(name, ".")), nil
			}
			list = list[3+nameLen:]
		}
		return "", nil
	}
	if len(b) != 0 {
		return bad("trailing bytes in extensions")
	}
	return "", nil
}

// validSNI reports whether s is a host name lb may route by: 1 to 253
// letters, digits, hyphens, dots and underscores.
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

// MatchSNI reports whether name matches an SNIRule's pattern: exact, or
// "*.example.com" for any name below example.com. An empty pattern
// matches only an empty name. It only reads its arguments.
func MatchSNI(pattern, name string) bool {
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return len(name) > len(suffix) && strings.HasSuffix(name, suffix)
	}
	return pattern == name
}
