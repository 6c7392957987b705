package tlsterm

import "net"

// recordConn is a client's socket as crypto/tls reads it, read so that
// the TLS connection's input buffer stays the size of one record while
// the client sends large ones (an upload).
//
// crypto/tls reads into a bytes.Buffer (its rawInput) as much as the
// socket has, up to the buffer's room, and never shrinks it. Once a read
// ends inside a record, the rest of that record is read behind the
// unread part, and bytes.Buffer makes room by doubling rather than by
// sliding the part down when the part is more than half of it: an upload
// of 16 KiB records leaves every connection with a buffer of 40 KiB or
// more, for as long as it stays open. If instead every read ends at a
// record's end, the buffer is empty when the next record is read, starts
// over at its front, and stays at one record and a little: 18 KiB. (A
// client whose records grow from small to 16 KiB, as Go's do, still
// doubles it once for each record that does not fit: 32 KiB.)
//
// So once the client sends large records (bulk), each read takes the
// rest of the current record and the header of the next, the most one
// read can take without passing a record's end. The header's bytes are
// kept here (hdr) and given out by the next Read, alone. At a record's
// end with no header read ahead (the socket had no more), the next read
// takes the header alone. Reads are then one a record, which is about
// what a read of the whole buffer took with 40 KiB buffers.
//
// While the client sends small records (requests, most of all), reads
// take what there is as before: one read a request, and the buffer as
// small as those records make it. A connection is bulk from the first
// record of bulkRecord bytes or more, and goes back after smallRecords
// small ones in a row. A switch back from bulk can leave the buffer
// grown as before, never larger.
//
// A recordConn is read by one goroutine at a time (crypto/tls holds its
// input lock while it reads); its other methods are its socket's.
type recordConn struct {
	net.Conn
	left  int     // bytes of the current record's body not yet given out
	hdr   [5]byte // the next record's header, as far as given out (hdrN)
	hdrN  int
	ahead [5]byte // header bytes read with the end of the record before
	aOff  int     // ahead[aOff:aEnd] waits to be given out
	aEnd  int
	bulk  bool
	small int // small records in a row while bulk
}

const (
	recordHeader = 5
	bulkRecord   = 8 << 10
	smallRecords = 4
)

func newRecordConn(c net.Conn) *recordConn { return &recordConn{Conn: c} }

// RawConn is the connection underneath, for whoever looks through to the
// socket (internal/peer).
func (c *recordConn) RawConn() net.Conn { return c.Conn }

// Read reads from the socket, bounded as the type's doc says.
func (c *recordConn) Read(p []byte) (int, error) {
	if c.aOff < c.aEnd {
		n := copy(p, c.ahead[c.aOff:c.aEnd])
		c.aOff += n
		c.follow(p[:n])
		return n, nil
	}
	if c.bulk && len(p) > 0 {
		switch {
		case c.left > 0:
			p = p[:min(len(p), c.left+recordHeader)]
		default:
			p = p[:min(len(p), recordHeader-c.hdrN)]
		}
	}
	n, err := c.Conn.Read(p)
	if c.bulk && c.left > 0 && n > c.left {
		// The next header came with the record's end: given out
		// alone, by the next Read.
		c.aOff, c.aEnd = 0, copy(c.ahead[:], p[c.left:n])
		n = c.left
	}
	c.follow(p[:n])
	return n, err
}

// follow moves the record framing along the bytes b given out.
func (c *recordConn) follow(b []byte) {
	for len(b) > 0 {
		if c.left > 0 {
			k := min(c.left, len(b))
			c.left -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hdrN:], b)
		c.hdrN += k
		b = b[k:]
		if c.hdrN < recordHeader {
			return
		}
		c.hdrN = 0
		c.left = int(c.hdr[3])<<8 | int(c.hdr[4])
		switch {
		case c.left >= bulkRecord:
			c.bulk, c.small = true, 0
		case c.bulk:
			c.small++
			c.bulk = c.small < smallRecords
		}
	}
}
