// Package l4 is lb's layer-4 proxy: it pipes TCP byte streams between
// clients and backends (after TLS termination, or untouched and routed by
// the ClientHello's server name), and speaks the PROXY protocol in both
// directions.
package l4

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy
// specifies it: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

// ProxyHeader is a PROXY protocol header. It is a plain value: goroutines
// may read one at once, but one that changes it owns it. The zero
// ProxyHeader is a PROXY command without addresses, which v1 writes as
// UNKNOWN.
type ProxyHeader struct {
	// Local is a v2 LOCAL command (health checks of the balancer in
	// front): no addresses, the connection is the balancer's own. v1
	// "UNKNOWN" decodes as Local too.
	Local bool
	// Source and Dest are the client's and the address it connected to.
	Source, Dest netip.AddrPort
	// TLVs are v2's type-length-value extensions.
	TLVs []TLV
}

// TLV is one v2 extension, a plain value like ProxyHeader. The zero TLV
// has type 0, which the specification leaves unassigned.
type TLV struct {
	Type  byte
	Value []byte
}

// TLV types and SSL sub-types of the v2 header (section 2.2).
const (
	TLVALPN        = 0x01
	TLVAuthority   = 0x02 // the host name the client asked for (SNI)
	TLVSSL         = 0x20
	TLVSSLVersion  = 0x21
	TLVSSLCN       = 0x22
	TLVSSLCipher   = 0x23
	TLVSSLSigAlg   = 0x24
	TLVSSLKeyAlg   = 0x25
	TLVNetNS       = 0x30
	sslClientSSL   = 0x01 // PP2_CLIENT_SSL
	maxV1Length    = 107
	v2HeaderLength = 16
)

// v2Signature starts every v2 header.
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

var (
	// ErrNoHeader means the stream does not start with a PROXY header.
	ErrNoHeader = errors.New("proxyproto: no PROXY protocol header")
	// ErrBadHeader means a PROXY header is malformed.
	ErrBadHeader = errors.New("proxyproto: malformed PROXY protocol header")
)

// AppendV1 appends the v1 (text) form of h.
func (h *ProxyHeader) AppendV1(b []byte) []byte {
	src, dst := h.Source.Addr().Unmap(), h.Dest.Addr().Unmap()
	if h.Local || !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	b = append(b, "PROXY "...)
	if src.Is4() {
		b = append(b, "TCP4 "...)
	} else {
		b = append(b, "TCP6 "...)
	}
	b = src.AppendTo(b)
	b = append(b, ' ')
	b = dst.AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(h.Source.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(h.Dest.Port()), 10)
	return append(b, "\r\n"...)
}

// AppendV2 appends the v2 (binary) form of h.
func (h *ProxyHeader) AppendV2(b []byte) []byte {
	b = append(b, v2Signature...)
	src, dst := h.Source.Addr().Unmap(), h.Dest.Addr().Unmap()
	var family byte
	var addrs []byte
	switch {
	case h.Local:
		b = append(b, 0x20) // version 2, LOCAL
	case src.Is4() && dst.Is4():
		b = append(b, 0x21)
		family = 0x11 // TCP over IPv4
		s, d := src.As4(), dst.As4()
		addrs = append(append(addrs, s[:]...), d[:]...)
	case src.Is6() && dst.Is6():
		b = append(b, 0x21)
		family = 0x21 // TCP over IPv6
		s, d := src.As16(), dst.As16()
		addrs = append(append(addrs, s[:]...), d[:]...)
	default:
		b = append(b, 0x21) // PROXY, but addresses it cannot carry
	}
	if family != 0 {
		addrs = binary.BigEndian.AppendUint16(addrs, h.Source.Port())
		addrs = binary.BigEndian.AppendUint16(addrs, h.Dest.Port())
	}
	b = append(b, family)
	n := len(addrs)
	for _, t := range h.TLVs {
		n += 3 + len(t.Value)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, addrs...)
	for _, t := range h.TLVs {
		b = append(b, t.Type)
		b = binary.BigEndian.AppendUint16(b, uint16(len(t.Value)))
		b = append(b, t.Value...)
	}
	return b
}

// SSLTLV builds the v2 PP2_TYPE_SSL extension for a connection that
// arrived over TLS: the client flags (SSL), a verify result of 0
// (success), and the protocol version and cipher as sub-TLVs.
func SSLTLV(version, cipher string) TLV {
	v := []byte{sslClientSSL, 0, 0, 0, 0}
	v = appendTLV(v, TLVSSLVersion, version)
	if cipher != "" {
		v = appendTLV(v, TLVSSLCipher, cipher)
	}
	return TLV{Type: TLVSSL, Value: v}
}

func appendTLV(b []byte, typ byte, s string) []byte {
	b = append(b, typ)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// ReadProxyHeader reads a PROXY header, version 1 or 2, from the start of br. It
// returns ErrNoHeader, having consumed nothing, when the stream starts
// with something else. The caller bounds the wait with a read deadline.
// Any number of calls may run at once, each with its own br.
func ReadProxyHeader(br *bufio.Reader) (*ProxyHeader, error) {
	first, err := br.Peek(1)
	if err != nil {
		return nil, err
	}
	switch first[0] {
	case 'P':
		return readV1(br)
	case '\r':
		return readV2(br)
	}
	return nil, ErrNoHeader
}

func readV1(br *bufio.Reader) (*ProxyHeader, error) {
	// The line is at most 107 bytes; look for its end within that.
	var line []byte
	for n := 8; ; n++ {
		b, err := br.Peek(n)
		if err != nil {
			if len(b) >= 6 && !bytes.HasPrefix(b, []byte("PROXY ")) {
				return nil, ErrNoHeader
			}
			return nil, err
		}
		if !bytes.HasPrefix(b, []byte("PROXY "[:min(6, len(b))])) {
			return nil, ErrNoHeader
		}
		if b[n-1] == '\n' {
			line = b
			break
		}
		if n >= maxV1Length {
			return nil, fmt.Errorf("%w: v1 line longer than %d bytes", ErrBadHeader, maxV1Length)
		}
	}
	h, err := parseV1(line)
	if err != nil {
		return nil, err
	}
	_, _ = br.Discard(len(line)) // peeked, so buffered: no error
	return h, nil
}

func parseV1(line []byte) (*ProxyHeader, error) {
	if len(line) < 8 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("%w: v1 line does not end in CRLF", ErrBadHeader)
	}
	f := bytes.Split(line[6:len(line)-2], []byte(" "))
	switch string(f[0]) {
	case "UNKNOWN":
		return &ProxyHeader{Local: true}, nil
	case "TCP4", "TCP6":
	default:
		return nil, fmt.Errorf("%w: v1 protocol %q", ErrBadHeader, f[0])
	}
	if len(f) != 5 {
		return nil, fmt.Errorf("%w: v1 wants 5 fields, has %d", ErrBadHeader, len(f))
	}
	src, err1 := netip.ParseAddr(string(f[1]))
	dst, err2 := netip.ParseAddr(string(f[2]))
	sp, err3 := parsePort(f[3])
	dp, err4 := parsePort(f[4])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, fmt.Errorf("%w: v1 addresses: %v", ErrBadHeader, err)
	}
	if want4 := string(f[0]) == "TCP4"; src.Is4() != want4 || dst.Is4() != want4 {
		return nil, fmt.Errorf("%w: v1 addresses do not match %s", ErrBadHeader, f[0])
	}
	return &ProxyHeader{Source: netip.AddrPortFrom(src, sp), Dest: netip.AddrPortFrom(dst, dp)}, nil
}

func parsePort(b []byte) (uint16, error) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, fmt.Errorf("bad port %q", b)
	}
	n, err := strconv.ParseUint(string(b), 10, 16)
	return uint16(n), err
}

func readV2(br *bufio.Reader) (*ProxyHeader, error) {
	hdr, err := br.Peek(v2HeaderLength)
	if err != nil {
		if len(hdr) > 0 && !bytes.HasPrefix(v2Signature, hdr[:min(len(hdr), len(v2Signature))]) {
			return nil, ErrNoHeader
		}
		return nil, err
	}
	if !bytes.Equal(hdr[:12], v2Signature) {
		return nil, ErrNoHeader
	}
	versionCommand, family := hdr[12], hdr[13]
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if versionCommand>>4 != 2 {
		return nil, fmt.Errorf("%w: v2 version %d", ErrBadHeader, versionCommand>>4)
	}
	if br.Size() < v2HeaderLength+n {
		return nil, fmt.Errorf("%w: v2 header of %d bytes is too long", ErrBadHeader, n)
	}
	all, err := br.Peek(v2HeaderLength + n)
	if err != nil {
		return nil, err
	}
	body := all[v2HeaderLength:]
	h := &ProxyHeader{}
	switch versionCommand & 0xF {
	case 0: // LOCAL
		h.Local = true
	case 1: // PROXY
	default:
		return nil, fmt.Errorf("%w: v2 command %d", ErrBadHeader, versionCommand&0xF)
	}
	var addrLen int
	switch family {
	case 0x11: // TCP4
		addrLen = 12
	case 0x21: // TCP6
		addrLen = 36
	case 0x00: // UNSPEC
	case 0x12, 0x22: // UDP: carried but not addresses lb can use
		addrLen = map[byte]int{0x12: 12, 0x22: 36}[family]
	case 0x31, 0x32: // UNIX
		addrLen = 216
	default:
		return nil, fmt.Errorf("%w: v2 address family 0x%02x", ErrBadHeader, family)
	}
	if len(body) < addrLen {
		return nil, fmt.Errorf("%w: v2 length %d is short of its addresses", ErrBadHeader, n)
	}
	if !h.Local {
		switch family {
		case 0x11:
			h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
			h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
		case 0x21:
			h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
			h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
		default:
			h.Local = true // nothing lb can use as a client address
		}
	}
	for rest := body[addrLen:]; len(rest) > 0; {
		if len(rest) < 3 {
			return nil, fmt.Errorf("%w: v2 TLV truncated", ErrBadHeader)
		}
		l := int(binary.BigEndian.Uint16(rest[1:3]))
		if len(rest) < 3+l {
			return nil, fmt.Errorf("%w: v2 TLV longer than the header", ErrBadHeader)
		}
		h.TLVs = append(h.TLVs, TLV{Type: rest[0], Value: append([]byte(nil), rest[3:3+l]...)})
		rest = rest[3+l:]
	}
	_, _ = br.Discard(len(all)) // peeked, so buffered: no error
	return h, nil
}

// TLV returns the value of the first extension of type t, or nil.
func (h *ProxyHeader) TLV(t byte) []byte {
	for _, x := range h.TLVs {
		if x.Type == t {
			return x.Value
		}
	}
	return nil
}

// ProxyHeaderFor builds the header announcing a connection from client
// to local. A nil or unparsable address is left invalid, so that v1
// writes UNKNOWN and v2 carries no addresses.
func ProxyHeaderFor(client, local net.Addr) *ProxyHeader {
	return &ProxyHeader{Source: addrPort(client), Dest: addrPort(local)}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
