package accesslog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestAppendDurationAsString(t *testing.T) {
	cases := []time.Duration{0, 1, 999, time.Microsecond, 1500 * time.Nanosecond, 5518 * time.Microsecond,
		time.Millisecond, 1005 * time.Microsecond, time.Second, 62500 * time.Millisecond, time.Hour,
		time.Hour + 5*time.Second, 2*time.Minute + time.Microsecond, -3 * time.Millisecond, 1<<62 + 12345}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		d := time.Duration(r.Int64N(int64(3 * time.Hour)))
		cases = append(cases, d, d.Round(time.Microsecond), d.Round(time.Millisecond)/time.Duration(1+r.IntN(1000)))
	}
	for _, d := range cases {
		if got := string(appendDuration(nil, d)); got != d.String() {
			t.Fatalf("%d: %q, want %q", int64(d), got, d.String())
		}
	}
}

// sample is a request as the proxy logs one.
func sample() *Request {
	return &Request{
		Listener: "https", Client: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000},
		TLS: "1.3", Proto: "HTTP/1.1", Method: []byte("GET"), Host: []byte("www.example.com"),
		URI: []byte("/a/b?c=d&e=f"), Status: 200, Bytes: 1234, Pool: "web", Backend: "10.0.0.11:8080",
		Attempts: 1, Duration: 5518 * time.Microsecond,
		Referer: []byte("https://www.example.com/"), UserAgent: []byte("Mozilla/5.0 (X11; Linux x86_64) Chrome/120"),
	}
}

// hostile is a request whose client-controlled fields hold what must not
// break a line: quotes, backslashes, control bytes, bytes that are not
// UTF-8, and spaces.
func hostile() *Request {
	r := sample()
	r.URI = []byte("/x\"y\\z\x1b[31m\xff\xfe é ")
	r.Host = []byte("evil\r\nhost")
	r.Referer = []byte("\"quoted\" \\ \x00")
	r.UserAgent = []byte("ua\nwith newline")
	r.Err = errors.New(`backend "b" said: no`)
	r.Bytes, r.Cache, r.CacheSet = -1, "", true
	return r
}

func line(f Format, r *Request) string {
	var buf bytes.Buffer
	w := NewWriter(&buf, nil)
	New(f, w).Request(r)
	w.Close()
	return buf.String()
}

// TestTextAsHclog: the text format is the line hclog wrote for the same
// fields (lb's own log format), less the time.
func TestTextAsHclog(t *testing.T) {
	for _, r := range []*Request{sample(), func() *Request { r := sample(); r.TLS, r.Pool, r.CacheSet, r.Cache = "", "", true, "HIT"; return r }()} {
		got := line(Text, r)
		var want bytes.Buffer
		log := hclog.New(&hclog.LoggerOptions{Name: "access", Level: hclog.Info, Output: &want})
		args := []any{"listener", r.Listener, "client", r.Client.String(), "tls", r.TLS, "proto", r.Proto,
			"method", string(r.Method), "host", string(r.Host), "uri", string(r.URI), "status", r.Status,
			"bytes", r.Bytes, "pool", r.Pool, "backend", r.Backend, "attempts", r.Attempts, "duration", r.Duration.String()}
		if r.CacheSet {
			args = append(args, "cache", r.Cache)
		}
		log.Info("request", args...)
		cut := func(s string) string { return s[strings.Index(s, " [INFO]"):] }
		if cut(got) != cut(want.String()) {
			t.Errorf("text line\n got %q\nwant %q", got, want.String())
		}
		if _, err := time.Parse("2006-01-02T15:04:05.000Z0700", got[:strings.Index(got, " ")]); err != nil {
			t.Errorf("time: %v", err)
		}
	}
}

// textFieldRE is a key=value pair of the text format: a bare value, or a
// quoted one with \" \\ \xHH escapes.
var textFieldRE = regexp.MustCompile(`^ ([a-z_]+)=("(?:[^"\\]|\\["\\]|\\x[0-9a-f]{2})*"|[-.-~]+)`)

// parseText reads a text line's fields back.
func parseText(t *testing.T, l string) map[string]string {
	t.Helper()
	if strings.Count(l, "\n") != 1 || !strings.HasSuffix(l, "\n") {
		t.Fatalf("not one line: %q", l)
	}
	rest := strings.TrimSuffix(l[strings.Index(l, "request:")+len("request:"):], "\n")
	fields := map[string]string{}
	for rest != "" {
		m := textFieldRE.FindStringSubmatch(rest)
		if m == nil {
			t.Fatalf("no field at %q", rest)
		}
		v := m[2]
		if strings.HasPrefix(v, `"`) {
			v = regexp.MustCompile(`\\(["\\]|x[0-9a-f]{2})`).ReplaceAllStringFunc(v[1:len(v)-1], func(e string) string {
				if e[1] == 'x' {
					n, _ := strconv.ParseUint(e[2:], 16, 8)
					return string([]byte{byte(n)})
				}
				return e[1:]
			})
		}
		fields[m[1]] = v
		rest = rest[len(m[0]):]
	}
	return fields
}

func TestTextParses(t *testing.T) {
	for _, r := range []*Request{sample(), hostile()} {
		l := line(Text, r)
		f := parseText(t, l)
		want := map[string]string{"listener": "https", "client": "192.0.2.7:40000", "tls": "1.3", "proto": "HTTP/1.1",
			"method": "GET", "host": string(r.Host), "uri": string(r.URI), "status": strconv.Itoa(r.Status),
			"bytes": strconv.Itoa(r.Bytes), "pool": "web", "backend": "10.0.0.11:8080", "attempts": "1", "duration": "5.518ms"}
		if r.CacheSet {
			want["cache"] = ""
		}
		if r.Err != nil {
			want["error"] = r.Err.Error()
		}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%s = %q, want %q (line %q)", k, f[k], v, l)
			}
		}
		if len(f) != len(want) {
			t.Errorf("fields %v, want %v", f, want)
		}
		for _, c := range []byte(l[:len(l)-1]) {
			if c < ' ' || c > '~' {
				t.Errorf("byte %#x written raw in %q", c, l)
			}
		}
	}
}

// TestJSONParses: one JSON object per line, the fields of lb's JSON log.
func TestJSONParses(t *testing.T) {
	for _, r := range []*Request{sample(), hostile()} {
		l := line(JSON, r)
		if strings.Count(l, "\n") != 1 {
			t.Fatalf("not one line: %q", l)
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		want := map[string]any{"@level": "info", "@message": "request", "@module": "access", "listener": "https",
			"client": "192.0.2.7:40000", "tls": "1.3", "proto": "HTTP/1.1", "method": "GET",
			"host": string(r.Host), "uri": viaJSON(string(r.URI)), "status": float64(r.Status),
			"bytes": float64(r.Bytes), "pool": "web", "backend": "10.0.0.11:8080", "attempts": float64(1), "duration": "5.518ms"}
		if r.CacheSet {
			want["cache"] = ""
		}
		if r.Err != nil {
			want["error"] = r.Err.Error()
		}
		for k, v := range want {
			if rec[k] != v {
				t.Errorf("%s = %#v, want %#v", k, rec[k], v)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, rec["@timestamp"].(string)); err != nil {
			t.Errorf("@timestamp: %v", err)
		}
		if len(rec) != len(want)+1 {
			t.Errorf("%d fields, want %d: %s", len(rec), len(want)+1, l)
		}
	}
}

// viaJSON is s as encoding/json writes it and reads it back (each byte
// that is not UTF-8 a U+FFFD).
func viaJSON(s string) string {
	b, _ := json.Marshal(s)
	var back string
	_ = json.Unmarshal(b, &back)
	return back
}

// combinedRE is GoAccess's COMBINED format (%h %^[%d:%t %^] "%r" %s %b
// "%R" "%u") as a regular expression.
var combinedRE = regexp.MustCompile(`^(\S+) \S+ \S+ \[(\d{2}/[A-Z][a-z]{2}/\d{4}):(\d{2}:\d{2}:\d{2}) [-+]\d{4}\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"\n$`)

func TestCombinedParses(t *testing.T) {
	m := combinedRE.FindStringSubmatch(line(Combined, sample()))
	if m == nil {
		t.Fatalf("not combined: %q", line(Combined, sample()))
	}
	if m[1] != "192.0.2.7" || m[4] != "GET /a/b?c=d&e=f HTTP/1.1" || m[5] != "200" || m[6] != "1234" ||
		m[7] != "https://www.example.com/" || m[8] != "Mozilla/5.0 (X11; Linux x86_64) Chrome/120" {
		t.Errorf("fields %q", m[1:])
	}
	if _, err := time.Parse("02/Jan/2006 15:04:05", m[2]+" "+m[3]); err != nil {
		t.Errorf("time: %v", err)
	}
	h := line(Combined, hostile())
	m = combinedRE.FindStringSubmatch(h)
	if m == nil {
		t.Fatalf("hostile request not combined: %q", h)
	}
	if m[6] != "-" || m[7] != `\x22quoted\x22 \x5c \x00` || m[8] != `ua\x0awith newline` {
		t.Errorf("fields %q", m[1:])
	}
	r := sample()
	r.Method, r.URI, r.Referer, r.UserAgent, r.Client = nil, nil, nil, nil, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 443}
	m = combinedRE.FindStringSubmatch(line(Combined, r))
	if m == nil || m[1] != "2001:db8::1" || m[4] != "-" || m[7] != "-" || m[8] != "-" {
		t.Errorf("a request with no head: %q", line(Combined, r))
	}
}

// TestLinesAllocateNothing: a line costs no allocation in any format.
func TestLinesAllocateNothing(t *testing.T) {
	w := NewWriter(discard{}, nil)
	defer w.Close()
	for _, f := range []Format{Text, JSON, Combined} {
		l, r := New(f, w), sample()
		r.CacheSet, r.Cache = true, "HIT"
		for range 100 {
			l.Request(r)
		}
		if n := testing.AllocsPerRun(1000, func() { l.Request(r) }); n != 0 {
			t.Errorf("format %d: %v allocations per line", f, n)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func BenchmarkAccessLog(b *testing.B) {
	for _, f := range []struct {
		name string
		f    Format
	}{{"text", Text}, {"json", JSON}, {"combined", Combined}} {
		b.Run(f.name, func(b *testing.B) {
			w := NewWriter(discard{}, nil)
			defer w.Close()
			l, r := New(f.f, w), sample()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					l.Request(r)
				}
			})
		})
	}
	// What the line cost before: hclog from a slice of values.
	b.Run("hclog", func(b *testing.B) {
		w := NewWriter(discard{}, nil)
		defer w.Close()
		log := hclog.New(&hclog.LoggerOptions{Name: "access", Level: hclog.Info, Output: w})
		r := sample()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				log.Info("request", "listener", r.Listener, "client", r.Client.String(), "tls", r.TLS, "proto", r.Proto,
					"method", string(r.Method), "host", string(r.Host), "uri", string(r.URI), "status", r.Status,
					"bytes", r.Bytes, "pool", r.Pool, "backend", r.Backend, "attempts", r.Attempts, "duration", r.Duration.String())
			}
		})
	})
}

// slowWriter blocks every write until released.
type slowWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	writes  int
	release chan struct{}
}

func (w *slowWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

// TestWriterNeverBlocksAndKeepsOrder: with the output stuck, lines are
// taken up to maxPending bytes and the rest dropped and counted, without
// waiting; released, what was taken is written whole, in order, in few
// writes.
func TestWriterNeverBlocksAndKeepsOrder(t *testing.T) {
	out := &slowWriter{release: make(chan struct{})}
	w := NewWriter(out, nil)
	pad := strings.Repeat("x", 1000)
	const total = 3000 // 3 MB: about a third fits
	start := time.Now()
	for i := range total {
		fmt.Fprintf(w, "line %d %s\n", i, pad)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("writes blocked on a stuck output for %s", d)
	}
	// Taken: a batch the writer holds (blocked), and maxPending more.
	dropped := w.Dropped()
	if taken := total - int(dropped); taken < maxPending/1010 || taken > 2*maxPending/1000+1 {
		t.Errorf("%d lines of 1 KB taken with the output stuck, want %d to %d", taken, maxPending/1010, 2*maxPending/1000)
	}
	close(out.release)
	w.Close()
	lines := strings.Split(strings.TrimSpace(out.buf.String()), "\n")
	if uint64(len(lines))+dropped != total {
		t.Fatalf("wrote %d lines and dropped %d, of %d", len(lines), dropped, total)
	}
	for i := 1; i < len(lines); i++ {
		var a, b int
		fmt.Sscanf(lines[i-1], "line %d", &a)
		fmt.Sscanf(lines[i], "line %d", &b)
		if b <= a || !strings.HasSuffix(lines[i], pad) {
			t.Fatalf("out of order or cut: %q after %q", lines[i], lines[i-1])
		}
	}
	if out.writes > 5 {
		t.Errorf("%d writes for %d lines waiting", out.writes, len(lines))
	}
	fmt.Fprintf(w, "after close\n") // dropped, not a panic
	if w.Dropped() != dropped+1 {
		t.Error("a line after Close was not counted as dropped")
	}
}

// TestWriterConcurrentLinesWhole: lines from many goroutines come out
// whole, each once.
func TestWriterConcurrentLinesWhole(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				fmt.Fprintf(w, "g%d i%d %s\n", g, i, strings.Repeat("y", i%97))
			}
		})
	}
	wg.Wait()
	w.Close()
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var g, i int
		if _, err := fmt.Sscanf(l, "g%d i%d", &g, &i); err != nil || !strings.HasSuffix(l, " "+strings.Repeat("y", i%97)) && i%97 != 0 {
			t.Fatalf("cut line %q", l)
		}
		seen[l[:strings.IndexByte(l+" ", ' ')]+fmt.Sprint(i)] = true
	}
	if len(seen) != 8*500 || w.Dropped() != 0 {
		t.Errorf("%d distinct lines, %d dropped; want 4000, 0", len(seen), w.Dropped())
	}
}

// TestTimesAsFormatted: the cached second and the fraction give what
// time.Format gives, across seconds and in zones with offsets.
func TestTimesAsFormatted(t *testing.T) {
	base := time.Date(2026, 12, 3, 13, 45, 59, 0, time.UTC)
	for _, zone := range []*time.Location{time.UTC, time.FixedZone("", 3600), time.FixedZone("", -(5*3600 + 1800))} {
		clock.Store(nil) // the zone is the process's: it does not change between lines
		for i := range 3000 {
			tm := base.Add(time.Duration(i) * 1234567 * time.Nanosecond).In(zone)
			for _, c := range []struct {
				got    []byte
				layout string
			}{
				{appendTextTime(nil, tm), "2006-01-02T15:04:05.000Z0700"},
				{appendJSONTime(nil, tm), "2006-01-02T15:04:05.000000Z07:00"},
				{appendCombinedTime(nil, tm), "02/Jan/2006:15:04:05 -0700"},
			} {
				if want := tm.Format(c.layout); string(c.got) != want {
					t.Fatalf("%v: %q, want %q", tm, c.got, want)
				}
			}
		}
	}
}

// countingWriter counts writes.
type countingWriter struct {
	mu     sync.Mutex
	writes int
	buf    bytes.Buffer
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

func (w *countingWriter) state() (int, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, w.buf.Len()
}

// TestWriterBatches: lines that come fast share writes of batchSize; a
// lone line is written within flushDelay.
func TestWriterBatches(t *testing.T) {
	out := &countingWriter{}
	w := NewWriter(out, nil)
	line := strings.Repeat("z", 99) + "\n"
	const lines = 20000 // 2 MB: about 31 batches
	for i := range lines {
		w.Write([]byte(line))
		if i%1000 == 0 {
			time.Sleep(time.Millisecond) // as a busy server would, not all at once
		}
	}
	w.Close()
	writes, n := out.state()
	if n+int(w.Dropped())*len(line) != lines*len(line) {
		t.Fatalf("%d bytes written, %d lines dropped, of %d lines", n, w.Dropped(), lines)
	}
	if writes > 2*lines*len(line)/batchSize+5 {
		t.Errorf("%d writes for %d lines of %d bytes, want about %d", writes, lines, len(line), lines*len(line)/batchSize)
	}
	t.Logf("%d writes, %d lines dropped", writes, w.Dropped())

	out = &countingWriter{}
	w = NewWriter(out, nil)
	defer w.Close()
	start := time.Now()
	w.Write([]byte(line))
	for {
		if _, n := out.state(); n == len(line) {
			break
		}
		if time.Since(start) > 5*flushDelay {
			t.Fatalf("a lone line not written after %s", time.Since(start))
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("a lone line was written after %s", time.Since(start).Round(time.Millisecond))
}
