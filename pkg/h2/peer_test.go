package h2

import (
	"bufio"
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/offloadlb/lb/internal/testutil"
)

// peer is an HTTP/2 client at the frame level for tests of request
// bodies. It sends DATA within the credit lb gives, in frames of any
// size, through a buffer (so that a body in 1-byte frames does not cost a
// TLS record each); a goroutine of its own reads what lb sends, keeps it
// by stream, gives back at once the credit of each response DATA frame,
// and answers PINGs. Its methods are safe for concurrent use.
type peer struct {
	t  *testing.T
	r  *testutil.H2Client // its Framer reads; writes go through fr
	bw *bufio.Writer
	fr *http2.Framer

	mu      sync.Mutex
	cond    sync.Cond
	enc     *hpack.Encoder
	hbuf    bytes.Buffer
	connWin int64
	win     map[uint32]int64 // credit per open stream
	sent    map[uint32]int64 // DATA bytes sent per stream
	resp    map[uint32]*testutil.H2Response
	updates map[uint32]int // WINDOW_UPDATE frames received; 0: the connection's
	err     error          // the connection failed or the test ended
}

// errPeerTimeout: a peer waited 20 s for credit or an answer.
var errPeerTimeout = errors.New("peer: nothing happened within 20s")

func newPeer(t *testing.T, addr string, settings ...http2.Setting) *peer {
	r := testutil.DialH2(t, addr, settings...)
	_ = r.Conn.SetDeadline(time.Time{}) // the peer's waits are bounded instead
	p := &peer{t: t, r: r, connWin: 65535, win: map[uint32]int64{}, sent: map[uint32]int64{},
		resp: map[uint32]*testutil.H2Response{}, updates: map[uint32]int{}}
	p.bw = bufio.NewWriterSize(r.Conn, 64<<10)
	p.fr = http2.NewFramer(p.bw, nil)
	p.enc = hpack.NewEncoder(&p.hbuf)
	p.cond.L = &p.mu
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
		p.mu.Lock()
		if p.err == nil {
			p.err = errors.New("peer: test over")
		}
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	go func() { // lets waits check their time limit
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				p.cond.Broadcast()
			}
		}
	}()
	go p.read()
	return p
}

func (p *peer) read() {
	for {
		f, err := p.r.Framer.ReadFrame()
		p.mu.Lock()
		if err != nil {
			if p.err == nil {
				p.err = err
			}
			p.cond.Broadcast()
			p.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.WindowUpdateFrame:
			p.updates[f.StreamID]++
			if f.StreamID == 0 {
				p.connWin += int64(f.Increment)
			} else if _, ok := p.win[f.StreamID]; ok {
				p.win[f.StreamID] += int64(f.Increment)
			}
		case *http2.RSTStreamFrame:
			delete(p.win, f.StreamID)
			r := p.response(f.StreamID)
			r.RST, r.Reset = true, f.ErrCode
		case *http2.MetaHeadersFrame:
			r := p.response(f.StreamID)
			for _, hf := range f.Fields {
				switch {
				case hf.Name == ":status" && hf.Value[0] == '1':
					r.Header["interim"] = hf.Value
				case hf.Name == ":status":
					r.Status = hf.Value
				default:
					r.Header[hf.Name] = hf.Value
				}
			}
			r.Ended = r.Ended || f.StreamEnded()
		case *http2.DataFrame:
			r := p.response(f.StreamID)
			r.Body = append(r.Body, f.Data()...)
			r.Ended = r.Ended || f.StreamEnded()
			if n := uint32(len(f.Data())); n > 0 {
				_ = p.fr.WriteWindowUpdate(0, n) // write errors show on the next read
				if !f.StreamEnded() {
					_ = p.fr.WriteWindowUpdate(f.StreamID, n)
				}
				_ = p.bw.Flush()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = p.fr.WritePing(true, f.Data)
				_ = p.bw.Flush()
			}
		case *http2.GoAwayFrame:
			p.err = errors.New("peer: GOAWAY " + f.ErrCode.String())
		}
		p.cond.Broadcast()
		p.mu.Unlock()
	}
}

// response is what stream id received so far; p.mu is held.
func (p *peer) response(id uint32) *testutil.H2Response {
	r := p.resp[id]
	if r == nil {
		r = &testutil.H2Response{Header: map[string]string{}}
		p.resp[id] = r
	}
	return r
}

// headers sends a header block on id; p.mu is held.
func (p *peer) headers(id uint32, end bool, fields ...string) {
	p.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		if err := p.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
			p.t.Error(err)
		}
	}
	_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: p.hbuf.Bytes(), EndStream: end, EndHeaders: true})
	_ = p.bw.Flush() // write errors show on the next read
}

// open starts a request on id: method on path, then fields as name,
// value pairs; end ends the stream.
func (p *peer) open(id uint32, method, path string, end bool, fields ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.win[id] = streamWindow // lb's SETTINGS came before
	p.headers(id, end, append([]string{":method", method, ":scheme", "https", ":authority", "lb.test", ":path", path}, fields...)...)
}

// trailers ends id with a header block of fields.
func (p *peer) trailers(id uint32, fields ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.headers(id, true, fields...)
}

// reset resets id.
func (p *peer) reset(id uint32, code http2.ErrCode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.win, id)
	_ = p.fr.WriteRSTStream(id, code)
	_ = p.bw.Flush() // write errors show on the next read
}

// send sends body on id in DATA frames of at most frame bytes, as credit
// allows; end ends the stream with the last one. It fails if the stream
// is reset, the connection fails, or no credit comes for 20 s.
func (p *peer) send(id uint32, body []byte, frame int, end bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p.err != nil {
			return p.err
		}
		w, open := p.win[id]
		if !open {
			return errors.New("peer: stream reset")
		}
		if len(body) == 0 {
			if end {
				_ = p.fr.WriteData(id, true, nil)
				_ = p.bw.Flush()
			}
			return nil
		}
		if w <= 0 || p.connWin <= 0 {
			_ = p.bw.Flush()
			if time.Now().After(deadline) {
				return errPeerTimeout
			}
			p.cond.Wait()
			continue
		}
		// A few hundred frames at a time, so that the reader gets the
		// lock between them.
		for range 256 {
			n := int(min(int64(len(body)), int64(frame), p.win[id], p.connWin))
			if n <= 0 {
				break
			}
			_ = p.fr.WriteData(id, end && n == len(body), body[:n]) // write errors show on the next read
			body = body[n:]
			p.win[id] -= int64(n)
			p.connWin -= int64(n)
			p.sent[id] += int64(n)
			if len(body) == 0 {
				break
			}
		}
		_ = p.bw.Flush()
		if len(body) == 0 {
			return nil
		}
		deadline = time.Now().Add(20 * time.Second)
		p.mu.Unlock()
		p.mu.Lock()
	}
}

// sendAsync is send on a goroutine of its own; its error comes on the
// channel.
func (p *peer) sendAsync(id uint32, body []byte, frame int, end bool) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- p.send(id, body, frame, end) }()
	return ch
}

// await waits for stream id to end or be reset, at most 20 s.
func (p *peer) await(id uint32) *testutil.H2Response {
	p.t.Helper()
	return p.awaitUntil(id, func(r *testutil.H2Response) bool { return r.Ended || r.RST })
}

// awaitReset waits for stream id to be reset, after its response if
// there is one, at most 20 s.
func (p *peer) awaitReset(id uint32) *testutil.H2Response {
	p.t.Helper()
	return p.awaitUntil(id, func(r *testutil.H2Response) bool { return r.RST })
}

func (p *peer) awaitUntil(id uint32, done func(*testutil.H2Response) bool) *testutil.H2Response {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := p.response(id)
		if done(r) {
			c := *r
			return &c
		}
		if p.err != nil || time.Now().After(deadline) {
			p.t.Fatalf("stream %d: no answer (%v); got %+v", id, p.err, r)
		}
		p.cond.Wait()
	}
}

// stalled waits until stream id has sent want bytes and has no credit
// left.
func (p *peer) stalled(id uint32, want int64) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for p.sent[id] != want || p.win[id] != 0 {
		if p.err != nil || time.Now().After(deadline) {
			p.t.Fatalf("stream %d sent %d with %d credit left, want %d and none (%v)", id, p.sent[id], p.win[id], want, p.err)
		}
		p.cond.Wait()
	}
}

// counts returns the bytes sent on id and the WINDOW_UPDATE frames
// received for it and for the connection.
func (p *peer) counts(id uint32) (sent int64, updates, connUpdates int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent[id], p.updates[id], p.updates[0]
}
