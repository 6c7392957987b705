package l4

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestV1Vectors(t *testing.T) {
	// Examples from section 2.1 of the specification.
	for _, tc := range []struct {
		h    ProxyHeader
		line string
	}{
		{ProxyHeader{Source: netip.MustParseAddrPort("192.168.0.1:56324"), Dest: netip.MustParseAddrPort("192.168.0.11:443")},
			"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"},
		{ProxyHeader{Source: netip.MustParseAddrPort("[2001:db8::1]:56324"), Dest: netip.MustParseAddrPort("[2001:db8::2]:443")},
			"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n"},
		{ProxyHeader{Local: true}, "PROXY UNKNOWN\r\n"},
	} {
		if got := string(tc.h.AppendV1(nil)); got != tc.line {
			t.Errorf("AppendV1 = %q, want %q", got, tc.line)
		}
		br := bufio.NewReader(strings.NewReader(tc.line + "rest"))
		h, err := ReadProxyHeader(br)
		if err != nil {
			t.Fatalf("ReadProxyHeader(%q): %v", tc.line, err)
		}
		if h.Local != tc.h.Local || h.Source != tc.h.Source || h.Dest != tc.h.Dest {
			t.Errorf("ReadProxyHeader(%q) = %+v", tc.line, h)
		}
		if rest, _ := io.ReadAll(br); string(rest) != "rest" {
			t.Errorf("after the header: %q", rest)
		}
	}
	// The longest legal line (section 2.1: 107 bytes) parses.
	long := "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
	if len(long) != 104 {
		t.Fatalf("test line is %d bytes", len(long))
	}
	if _, err := ReadProxyHeader(bufio.NewReader(strings.NewReader(long))); err != nil {
		t.Errorf("longest line: %v", err)
	}
}

func TestV2Vectors(t *testing.T) {
	// Written out from section 2.2: signature, 0x21 (v2, PROXY), 0x11
	// (TCP over IPv4), length 12, then source, destination, ports.
	v4 := "0d0a0d0a000d0a515549540a" + "21" + "11" + "000c" +
		"c0a80001" + "c0a8000b" + "dc04" + "01bb"
	h := ProxyHeader{Source: netip.MustParseAddrPort("192.168.0.1:56324"), Dest: netip.MustParseAddrPort("192.168.0.11:443")}
	if got := hex.EncodeToString(h.AppendV2(nil)); got != v4 {
		t.Errorf("AppendV2 IPv4 =\n%s\nwant\n%s", got, v4)
	}
	// IPv6 (0x21 family, 36 bytes) with an AUTHORITY and an SSL TLV.
	h6 := ProxyHeader{
		Source: netip.MustParseAddrPort("[2001:db8::1]:1234"),
		Dest:   netip.MustParseAddrPort("[2001:db8::2]:443"),
		TLVs:   []TLV{{Type: TLVAuthority, Value: []byte("db.example.com")}, SSLTLV("TLSv1.3", "")},
	}
	v6 := "0d0a0d0a000d0a515549540a" + "21" + "21" + "0047" + // 36 + (3+14) + (3+15)
		"20010db8000000000000000000000001" + "20010db8000000000000000000000002" + "04d2" + "01bb" +
		"02" + "000e" + hex.EncodeToString([]byte("db.example.com")) +
		"20" + "000f" + "01" + "00000000" + "21" + "0007" + hex.EncodeToString([]byte("TLSv1.3"))
	if got := hex.EncodeToString(h6.AppendV2(nil)); got != v6 {
		t.Errorf("AppendV2 IPv6 =\n%s\nwant\n%s", got, v6)
	}
	local := "0d0a0d0a000d0a515549540a" + "20" + "00" + "0000"
	if got := hex.EncodeToString((&ProxyHeader{Local: true}).AppendV2(nil)); got != local {
		t.Errorf("AppendV2 LOCAL = %s, want %s", got, local)
	}

	for _, tc := range []struct {
		hexed string
		want  ProxyHeader
	}{{v4, h}, {v6, h6}, {local, ProxyHeader{Local: true}}} {
		raw, _ := hex.DecodeString(tc.hexed)
		br := bufio.NewReader(bytes.NewReader(append(raw, "payload"...)))
		got, err := ReadProxyHeader(br)
		if err != nil {
			t.Fatalf("ReadProxyHeader(%s): %v", tc.hexed, err)
		}
		if got.Local != tc.want.Local || got.Source != tc.want.Source || got.Dest != tc.want.Dest {
			t.Errorf("ReadProxyHeader = %+v, want %+v", got, tc.want)
		}
		if string(got.TLV(TLVAuthority)) != string(tc.want.TLV(TLVAuthority)) {
			t.Errorf("authority %q", got.TLV(TLVAuthority))
		}
		if rest, _ := io.ReadAll(br); string(rest) != "payload" {
			t.Errorf("after the header: %q", rest)
		}
	}
}

func TestBadHeaders(t *testing.T) {
	for name, in := range map[string]string{
		"http request":        "GET / HTTP/1.1\r\n",
		"similar word":        "POST / HTTP/1.1\r\n",
		"v1 no CRLF":          "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
		"v1 bad address":      "PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
		"v1 mixed families":   "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
		"v1 port range":       "PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
		"v1 leading zero":     "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
		"v1 too long":         "PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n",
		"v1 fields":           "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
		"v2 wrong version":    string(mustHex("0d0a0d0a000d0a515549540a" + "11" + "11" + "000c" + strings.Repeat("00", 12))),
		"v2 short addresses":  string(mustHex("0d0a0d0a000d0a515549540a" + "21" + "11" + "0004" + "00000000")),
		"v2 truncated TLV":    string(mustHex("0d0a0d0a000d0a515549540a" + "21" + "00" + "0002" + "0200")),
		"v2 TLV past the end": string(mustHex("0d0a0d0a000d0a515549540a" + "21" + "00" + "0004" + "020009" + "61")),
		"v2 bad command":      string(mustHex("0d0a0d0a000d0a515549540a" + "25" + "11" + "000c" + strings.Repeat("00", 12))),
		"garbage":             "\x16\x03\x01\x00\x05hello",
	} {
		if _, err := ReadProxyHeader(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A truncated header waits for more: the caller's deadline ends it.
	c1, c2 := net.Pipe()
	defer c1.Close()
	go c2.Write([]byte("PROXY TCP4 1.2.3.4"))
	c1.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := ReadProxyHeader(bufio.NewReader(c1)); err == nil {
		t.Error("truncated header accepted")
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func FuzzReadProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(mustHex("0d0a0d0a000d0a515549540a2111000cc0a80001c0a8000bdc0401bb"))
	f.Add(mustHex("0d0a0d0a000d0a515549540a20000000"))
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		h, err := ReadProxyHeader(br)
		if err != nil {
			return
		}
		// Whatever parses must encode and parse back to the same.
		for _, enc := range [][]byte{h.AppendV2(nil), h.AppendV1(nil)} {
			h2, err := ReadProxyHeader(bufio.NewReaderSize(bytes.NewReader(enc), 4096))
			if err != nil {
				t.Fatalf("re-reading %x: %v", enc, err)
			}
			if !h.Local && !h2.Local && (h2.Source != h.Source || h2.Dest != h.Dest) {
				t.Fatalf("round trip changed %+v into %+v", h, h2)
			}
		}
	})
}

// clientHello captures what a crypto/tls client sends first.
func clientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	c1, c2 := net.Pipe()
	go func() {
		_ = tls.Client(c1, cfg).Handshake() // cut short once the hello is read
		c1.Close()
	}()
	c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	var buf bytes.Buffer
	chunk := make([]byte, 4096)
	for {
		n, err := c2.Read(chunk)
		buf.Write(chunk[:n])
		if err != nil || hasFullHello(buf.Bytes()) {
			break
		}
	}
	c2.Close()
	return buf.Bytes()
}

func hasFullHello(b []byte) bool {
	if len(b) < 5 {
		return false
	}
	return len(b) >= 5+int(b[3])<<8|int(b[4])
}

func TestPeekServerName(t *testing.T) {
	for _, tc := range []struct {
		cfg  *tls.Config
		want string
	}{
		{&tls.Config{ServerName: "db.example.com"}, "db.example.com"},
		{&tls.Config{ServerName: "API.Example.COM", MaxVersion: tls.VersionTLS12}, "api.example.com"},
		{&tls.Config{ServerName: "pq.example.com", CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}}, "pq.example.com"},
		{&tls.Config{InsecureSkipVerify: true}, ""}, // no SNI
	} {
		hello := clientHello(t, tc.cfg)
		br := bufio.NewReaderSize(bytes.NewReader(hello), maxHello+5)
		got, err := PeekServerName(br)
		if err != nil || got != tc.want {
			t.Errorf("SNI %q: got %q, %v", tc.cfg.ServerName, got, err)
		}
		// Nothing was consumed: the stream forwards untouched.
		rest, _ := io.ReadAll(br)
		if !bytes.Equal(rest, hello) {
			t.Errorf("the hello was consumed")
		}
	}
}

func TestPeekServerNameSplitAcrossRecords(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "split.example.com"})
	body := hello[5:]
	// Re-frame the handshake message as two records.
	var b []byte
	for _, part := range [][]byte{body[:40], body[40:]} {
		b = append(b, 0x16, 3, 1, byte(len(part)>>8), byte(len(part)))
		b = append(b, part...)
	}
	got, err := PeekServerName(bufio.NewReaderSize(bytes.NewReader(b), maxHello+5))
	if err != nil || got != "split.example.com" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestPeekServerNameRejectsGarbage(t *testing.T) {
	hello := clientHello(t, &tls.Config{ServerName: "db.example.com"})
	for name, in := range map[string][]byte{
		"http":         []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"ssh":          []byte("SSH-2.0-OpenSSH_9.2\r\n"),
		"alert record": {0x15, 3, 3, 0, 2, 2, 40},
		"zero length":  {0x16, 3, 1, 0, 0},
		"server hello": append([]byte{0x16, 3, 3, 0, 4}, 2, 0, 0, 0),
		"cut short":    hello[:len(hello)/2],
		"bad lengths": func() []byte {
			b := append([]byte(nil), hello...)
			b[5+4+2+32] = 200 // session id length past the end
			return b
		}(),
	} {
		br := bufio.NewReaderSize(bytes.NewReader(in), maxHello+5)
		done := make(chan error, 1)
		go func() {
			_, err := PeekServerName(br)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s: accepted", name)
			}
			if name == "http" && !errors.Is(err, ErrNotTLS) {
				t.Errorf("http: %v, want ErrNotTLS", err)
			}
		case <-time.After(time.Second):
			t.Errorf("%s: hangs", name)
		}
	}
}

func TestMatchSNI(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"db.example.com", "db.example.com", true},
		{"db.example.com", "db2.example.com", false},
		{"*.example.com", "db.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "badexample.com", false},
	} {
		if got := MatchSNI(tc.pattern, tc.name); got != tc.want {
			t.Errorf("MatchSNI(%q, %q) = %v", tc.pattern, tc.name, got)
		}
	}
}

// FuzzPeekServerName checks that peeking never consumes the stream, which
// is forwarded untouched, and that a name found is the one crypto/tls,
// standing for a backend that terminates TLS, reads from the same bytes:
// a tcp listener routes by it.
func FuzzPeekServerName(f *testing.F) {
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	for _, name := range []string{"db.example.com", "", "Mixed.Example.COM"} {
		hello := clientHello(f, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		f.Add(hello)
		// The same hello split across two records.
		n := len(hello) - 5
		split := append([]byte{0x16, 3, 1, byte(n / 2 >> 8), byte(n / 2)}, hello[5:5+n/2]...)
		split = append(split, 0x16, 3, 1, byte((n-n/2)>>8), byte(n-n/2))
		f.Add(append(split, hello[5+n/2:]...))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), maxHello+5)
		name, err := PeekServerName(br)
		if rest, _ := io.ReadAll(br); !bytes.Equal(rest, in) {
			t.Fatalf("peeking consumed the stream: %x left of %x", rest, in)
		}
		if err != nil {
			return
		}
		if name != "" && (!validSNI(name) || name != strings.ToLower(name)) {
			t.Fatalf("name %q is not a lower-case host name", name)
		}
		if seen, ok := tlsServerName(in); ok && !strings.EqualFold(strings.TrimSuffix(seen, "."), name) {
			t.Fatalf("lb routes by %q, crypto/tls reads %q", name, seen)
		}
	})
}

// tlsServerName is the server name a crypto/tls server reads from in, and
// whether it read a ClientHello at all.
func tlsServerName(in []byte) (name string, ok bool) {
	stop := errors.New("hello read")
	cfg := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name, ok = h.ServerName, true
		return nil, stop
	}}
	_ = tls.Server(byteConn{bytes.NewReader(in)}, cfg).Handshake() // stopped on purpose, or not a hello
	return name, ok
}

// byteConn is a connection that reads fixed bytes and discards writes.
type byteConn struct{ r *bytes.Reader }

func (c byteConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c byteConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c byteConn) Close() error                     { return nil }
func (c byteConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c byteConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c byteConn) SetDeadline(time.Time) error      { return nil }
func (c byteConn) SetReadDeadline(time.Time) error  { return nil }
func (c byteConn) SetWriteDeadline(time.Time) error { return nil }
