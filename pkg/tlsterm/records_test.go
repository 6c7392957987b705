package tlsterm

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/offloadlb/lb/internal/certgen"
)

// chunkedConn gives out its bytes in reads of random sizes, as a socket
// may.
type chunkedConn struct {
	net.Conn
	data []byte
	rnd  *rand.Rand
}

func (c *chunkedConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), 1+c.rnd.IntN(40000))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// TestRecordConnFraming: whatever the sizes of the socket's reads and of
// the reads asked for, recordConn gives out the stream as it came, and
// once bulk no read passes a record's end, save for the next header's
// bytes given out on their own.
func TestRecordConnFraming(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var ends []int // offsets where records end
	for range 400 {
		n := rnd.IntN(300)
		if rnd.IntN(3) > 0 {
			n = 16384 + rnd.IntN(257)
		}
		stream = append(stream, 23, 3, 3, byte(n>>8), byte(n))
		for range n {
			stream = append(stream, byte(rnd.Uint32()))
		}
		ends = append(ends, len(stream))
	}
	c := newRecordConn(&chunkedConn{data: stream, rnd: rnd})
	var got []byte
	buf := make([]byte, 64<<10)
	for {
		wasBulk := c.bulk && c.aOff == c.aEnd
		n, err := c.Read(buf[:1+rnd.IntN(len(buf))])
		if wasBulk && n > 0 {
			start, end := len(got), len(got)+n
			for _, e := range ends {
				if e > start && e < end {
					t.Fatalf("a bulk read gave out bytes %d to %d, past the record end at %d", start, end, e)
				}
			}
		}
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, stream) {
		t.Fatalf("gave out %d bytes, not the %d of the stream", len(got), len(stream))
	}
}

// TestRecordConnInputBuffer: a TLS connection that takes an upload of
// 16 KiB records through recordConn keeps an input buffer of one record
// and a little, where one reading the socket directly grows it to 40 KiB
// or more (crypto/tls's rawInput, looked at by reflection: the test skips
// if a Go release renames it). A client that starts with small records
// and grows them (Go's dynamic record sizing) leaves it at 32 KiB: each
// record that does not fit doubles the buffer.
func TestRecordConnInputBuffer(t *testing.T) {
	pair, err := certgen.SelfSigned("localhost")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name          string
		wrap, dynamic bool
		max           int
	}{
		{"16 KiB records through recordConn", true, false, 20 << 10},
		{"growing records through recordConn", true, true, 32 << 10},
		{"16 KiB records, the socket read directly", false, false, 0},
	} {
		size := inputBuffer(t, cert, c.wrap, c.dynamic)
		t.Logf("%s: input buffer of %d bytes", c.name, size)
		if c.max > 0 && size > c.max {
			t.Errorf("%s: the input buffer grew to %d bytes, more than %d", c.name, size, c.max)
		}
	}
}

// inputBuffer returns the size of the input buffer of a server-side TLS
// connection, through recordConn or not, once a client has sent it 1 MiB
// in 64 KiB writes, in records of 16 KiB or (dynamic) growing to it.
func inputBuffer(t *testing.T, cert tls.Certificate, wrap, dynamic bool) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, DynamicRecordSizingDisabled: !dynamic})
		if err != nil {
			return
		}
		defer c.Close()
		for off := 0; off < len(body); off += 64 << 10 {
			c.Write(body[off : off+64<<10]) // the server's reads say how it went
		}
	}()
	raw, err := ln.Accept()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	var nc net.Conn = raw
	if wrap {
		nc = newRecordConn(raw)
	}
	tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert}})
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16<<10)
	for got := 0; got < len(body); {
		// Slower than the client now and then, so that the socket
		// holds more than a record at a read.
		if got%(256<<10) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		n, err := tc.Read(buf)
		if !bytes.Equal(buf[:n], body[got:got+n]) {
			t.Fatalf("bytes %d to %d differ", got, got+n)
		}
		got += n
		if err != nil {
			t.Fatal(err)
		}
	}
	in := reflect.ValueOf(tc).Elem().FieldByName("rawInput")
	if !in.IsValid() || in.FieldByName("buf").Kind() != reflect.Slice {
		t.Skip("crypto/tls has no rawInput.buf to look at")
	}
	return in.FieldByName("buf").Cap()
}
