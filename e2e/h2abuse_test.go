package e2e

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Attacker is an HTTP/2 client over TLS that writes frames itself: it
// keeps to the flow-control credit lb gives (more would be a protocol
// error that ends the connection, not an attack) and records how each of
// its streams ended.
type h2Attacker struct {
	t  *testing.T
	c  *tls.Conn
	fr *http2.Framer

	mu      sync.Mutex
	cond    sync.Cond
	connWin int64
	initWin int64
	win     map[uint32]int64
	opened  map[uint32]time.Time
	ended   map[uint32]time.Duration // from HEADERS to lb's answer or reset
	status  map[uint32]string        // lb's :status, or "RST_STREAM <code>"
	// lastData is when the last body bytes were sent on a stream, and
	// silent how long before its end that was.
	lastData map[uint32]time.Time
	silent   map[uint32]time.Duration
	err      error // the read loop's end
}

func dialAttacker(t *testing.T, addr string) *h2Attacker {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	a := &h2Attacker{t: t, c: c, fr: http2.NewFramer(c, c), connWin: 65535, initWin: 65535,
		win: map[uint32]int64{}, opened: map[uint32]time.Time{}, ended: map[uint32]time.Duration{}, status: map[uint32]string{},
		lastData: map[uint32]time.Time{}, silent: map[uint32]time.Duration{}}
	a.cond.L = &a.mu
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	io.WriteString(c, http2.ClientPreface)
	a.fr.WriteSettings()
	go a.read()
	return a
}

// read follows lb's frames until the connection ends.
func (a *h2Attacker) read() {
	for {
		f, err := a.fr.ReadFrame()
		a.mu.Lock()
		if err != nil {
			a.err = err
			a.cond.Broadcast()
			a.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for id := range a.win {
						a.win[id] += int64(v) - a.initWin
					}
					a.initWin = int64(v)
				}
				a.fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				a.connWin += int64(f.Increment)
			} else if _, ok := a.win[f.StreamID]; ok {
				a.win[f.StreamID] += int64(f.Increment)
			}
		case *http2.MetaHeadersFrame:
			a.end(f.StreamID, f.PseudoValue("status"))
		case *http2.RSTStreamFrame:
			a.end(f.StreamID, "RST_STREAM "+f.ErrCode.String())
		case *http2.PingFrame:
			if !f.IsAck() {
				a.fr.WritePing(true, f.Data)
			}
		}
		a.cond.Broadcast()
		a.mu.Unlock()
	}
}

// end records the first answer or reset of stream id.
func (a *h2Attacker) end(id uint32, how string) {
	if _, done := a.ended[id]; done {
		return
	}
	if start, ok := a.opened[id]; ok {
		a.ended[id] = time.Since(start)
		a.status[id] = how
		if last, ok := a.lastData[id]; ok {
			a.silent[id] = time.Since(last)
		} else {
			a.silent[id] = a.ended[id]
		}
	}
}

// open starts a POST whose body never ends.
func (a *h2Attacker) open(id uint32) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "www.example.com"}, {":path", "/upload"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.opened[id] = time.Now()
	a.win[id] = a.initWin
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true})
}

// flood sends up to perStream bytes on each stream, as fast as lb's
// credit allows, then (or while lb gives no credit) an empty DATA frame on
// every open stream each tick, until every stream has ended or until.
func (a *h2Attacker) flood(ids []uint32, perStream int64, tick time.Duration, until time.Time) {
	chunk := make([]byte, 16<<10)
	sent := map[uint32]int64{}
	lastIdle := time.Now()
	for time.Now().Before(until) {
		a.mu.Lock()
		if a.err != nil || len(a.ended) == len(ids) {
			a.mu.Unlock()
			return
		}
		progress := false
		for _, id := range ids {
			if _, done := a.ended[id]; done || sent[id] >= perStream {
				continue
			}
			n := min(int64(len(chunk)), perStream-sent[id], a.connWin, a.win[id])
			if n <= 0 {
				continue
			}
			a.connWin -= n
			a.win[id] -= n
			sent[id] += n
			a.fr.WriteData(id, false, chunk[:n])
			a.lastData[id] = time.Now()
			progress = true
		}
		if time.Since(lastIdle) >= tick {
			// The frames that kept a request alive before: they carry
			// nothing, and cost the sender nothing.
			lastIdle = time.Now()
			for _, id := range ids {
				if _, done := a.ended[id]; !done {
					a.fr.WriteData(id, false, nil)
				}
			}
		}
		if !progress {
			// Wait for credit or an answer; the tick wakes the loop too.
			t := time.AfterFunc(tick, func() {
				a.mu.Lock()
				a.cond.Broadcast()
				a.mu.Unlock()
			})
			a.cond.Wait()
			t.Stop()
		}
		a.mu.Unlock()
	}
}

// rssMiB is the resident memory of process pid now (VmRSS) and at its
// peak (VmHWM), in MiB.
func rssMiB(t *testing.T, pid int) (now, peak float64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		for key, v := range map[string]*float64{"VmRSS:": &now, "VmHWM:": &peak} {
			if s, ok := strings.CutPrefix(line, key); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "kB")), 64)
				*v = kb / 1024
			}
		}
	}
	return now, peak
}

// TestHTTP2BodyFlood: clients that open many streams, send what lb lets
// them of a body on each without ever ending it, and then keep the
// streams alive with empty DATA frames, make lb hold no more than the
// connection's body budget (16 MiB here), and every stream is answered
// 408 once read_timeout has passed without a byte of its body (the
// bodies stream to a backend that wants them whole; empty frames do not
// count), unless lb refused it before to make room.
func TestHTTP2BodyFlood(t *testing.T) {
	const (
		conns     = 2
		streams   = 30
		perStream = 4 << 20 // max_request_body: all of it is allowed
		readTO    = 2 * time.Second
		// The bound on lb's growth: five times what the two connections'
		// budgets let them hold (2 x 16 MiB of body bytes). A body's
		// buffer grows by doubling, the GC lets the heap reach twice
		// what is live, and the buffers of refused streams are garbage
		// until it runs: about 4x, measured. Without budgets lb held
		// whatever was sent (240 MiB of bodies here) and grew by 280 MiB,
		// and by the whole attack for as long as it lasted.
		growthMiB = 160
	)
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "b1")
	// A backend that wants a body whole before it answers: a stream
	// whose client stops sending bytes is lb's to end.
	b.setHook(func(r *http.Request) { io.Copy(io.Discard, r.Body) })
	cfg := strings.Replace(baseConfig(fastHealth, backendsTOML(b)), `pool = "web"`, `pool = "web"
read_timeout = "2s"
write_timeout = "5s"
idle_timeout = "10s"
max_request_body = "4MiB"`, 1)
	lb := startLB(t, dir, cfg)
	pid := lb.cmd.Process.Pid
	_, base := rssMiB(t, pid)

	// How long the clients keep at it: long enough for every stream to
	// send what it may and then fall silent for read_timeout. Under the
	// race detector on a busy machine the 4 MiB bodies alone took more
	// than the 6 s that is plenty without it.
	flood := readTO + 4*time.Second
	if raceEnabled {
		flood = readTO + 14*time.Second
	}
	start := time.Now()
	var wg sync.WaitGroup
	attackers := make([]*h2Attacker, conns)
	for i := range attackers {
		a := dialAttacker(t, lb.addrs["https"])
		attackers[i] = a
		ids := make([]uint32, streams)
		for j := range ids {
			ids[j] = uint32(2*j + 1)
			a.open(ids[j])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.flood(ids, perStream, 200*time.Millisecond, start.Add(flood))
		}()
	}
	wg.Wait()
	_, peak := rssMiB(t, pid)
	t.Logf("lb resident memory: %.0f MiB at rest, %.0f MiB at its peak under %d connections x %d streams x %d MiB", base, peak, conns, streams, perStream>>20)

	var longest, silent time.Duration
	statuses := map[string]int{}
	for i, a := range attackers {
		a.mu.Lock()
		if len(a.ended) != streams {
			t.Errorf("connection %d: %d of %d streams ended within %s (connection: %v)", i, len(a.ended), streams, time.Since(start).Round(time.Millisecond), a.err)
		}
		for _, d := range a.ended {
			longest = max(longest, d)
		}
		for _, d := range a.silent {
			silent = max(silent, d)
		}
		for _, s := range a.status {
			statuses[s]++
		}
		a.mu.Unlock()
	}
	t.Logf("streams ended: %v, the last %s after its head; the longest silence before an end %s", statuses, longest.Round(time.Millisecond), silent.Round(time.Millisecond))
	// 408 once read_timeout is up; lb refuses the newest streams
	// (REFUSED_STREAM) when a connection's budget is full of bodies none
	// of which can finish.
	if refused := statuses["RST_STREAM REFUSED_STREAM"]; statuses["408"] == 0 || statuses["408"]+refused != conns*streams {
		t.Errorf("answers %v, want 408 or REFUSED_STREAM for all %d streams", statuses, conns*streams)
	}
	// A body that streams (the backend takes what is sent) ends
	// read_timeout after its last bytes: the empty frames do not count.
	if silent > readTO+time.Second {
		t.Errorf("a stream ended %s after its last body bytes, want within read_timeout %s (+1s)", silent, readTO)
	}
	bound := float64(growthMiB)
	if raceEnabled {
		bound *= 2 // the race detector's shadow memory
	}
	if peak-base > bound {
		t.Errorf("lb grew by %.0f MiB, from %.0f to %.0f MiB; want under %.0f MiB", peak-base, base, peak, bound)
	}
	// The connections still serve.
	a := attackers[0]
	a.mu.Lock()
	err := a.err
	a.mu.Unlock()
	if err != nil {
		t.Errorf("connection ended: %v", err)
	}
}

// TestHTTP2ShutdownSlowReader: an HTTP/2 client that stops reading in the
// middle of a large answer does not hold lb's stop past shutdown_grace
// (write_timeout is far longer here).
func TestHTTP2ShutdownSlowReader(t *testing.T) {
	const grace = time.Second
	dir := t.TempDir()
	writeCerts(t, dir)
	big := startBigBackend(t, 64<<20)
	cfg := strings.Replace(baseConfig("  check = \"none\"", "  [[pool.backend]]\n  address = \""+big+"\"\n"), `pool = "web"`, `pool = "web"
write_timeout = "15s"`, 1)
	cfg = strings.Replace(cfg, `shutdown_grace = "10s"`, `shutdown_grace = "1s"`, 1)
	lb := startLB(t, dir, cfg)

	c, err := tls.Dial("tcp", lb.addrs["https"], &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fr := http2.NewFramer(c, c)
	io.WriteString(c, http2.ClientPreface)
	// All the credit there is: only the socket holds lb back.
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	fr.WriteWindowUpdate(0, 1<<31-1-65535)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "www.example.com"}, {":path", "/big"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	// Read until the answer's body flows, then stop reading.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("before the body: %v", err)
		}
		if _, ok := f.(*http2.SettingsFrame); ok {
			fr.WriteSettingsAck()
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 {
			break
		}
	}
	// Wait until the socket's receive queue has stopped growing for a
	// while: lb's writes are then blocked on this client.
	local, remote := c.LocalAddr().(*net.TCPAddr).Port, c.RemoteAddr().(*net.TCPAddr).Port
	last, same := int64(-1), 0
	for deadline := time.Now().Add(10 * time.Second); same < 3; {
		q := rxQueue(t, local, remote)
		if q > 0 && q == last {
			same++
		} else {
			same = 0
		}
		if time.Now().After(deadline) {
			t.Fatalf("receive queue still moving: %d bytes", q)
		}
		last = q
		time.Sleep(100 * time.Millisecond)
	}

	signalled := time.Now()
	lb.signal(syscall.SIGTERM)
	code := lb.wait(30 * time.Second)
	took := time.Since(signalled)
	t.Logf("lb exited %d, %s after SIGTERM (shutdown_grace %s, write_timeout 15s)", code, took.Round(time.Millisecond), grace)
	if code != 0 {
		t.Errorf("exit code %d", code)
	}
	if took > grace+2*time.Second {
		t.Errorf("stop took %s with shutdown_grace %s: held by a client that does not read", took, grace)
	}
}

// rxQueue is the receive queue of the TCP socket from local port to
// remote port on 127.0.0.1, from /proc/net/tcp.
func rxQueue(t *testing.T, local, remote int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	// Both ends: Linux gives an ephemeral port to several connections
	// at once when their far ends differ, and a listener may hold the
	// same number.
	wantLocal, wantRemote := fmt.Sprintf(":%04X", local), fmt.Sprintf(":%04X", remote)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasSuffix(f[1], wantLocal) || !strings.HasSuffix(f[2], wantRemote) {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		n, err := strconv.ParseInt(rx, 16, 64)
		if err != nil {
			t.Fatal(errors.New("bad /proc/net/tcp line: " + line))
		}
		return n
	}
	t.Fatalf("no socket from local port %d to port %d in /proc/net/tcp", local, remote)
	return 0
}
