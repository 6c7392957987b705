package proxy

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/cache"
	"github.com/offloadlb/lb/pkg/compress"
)

// compressPolicy is [listener.compress] with its defaults but min_size.
func compressPolicy(minSize int64) *compress.Policy {
	return compress.New(compress.Config{
		Algorithms: []string{"zstd", "br", "gzip"},
		Types:      []string{"text/*", "application/json"},
		MinSize:    minSize,
	}, nil)
}

// startTextBackend serves body as application/json on 127.0.0.1 with
// net/http, which sends a body over 2 KiB or so chunked (no
// Content-Length) when the handler writes it in pieces: /pieces does,
// anything else gets a Content-Length.
func startTextBackend(t *testing.T, body []byte, header ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", `"v1"`)
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		if r.URL.Path != "/pieces" {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Write(body)
			return
		}
		for p := body; len(p) > 0; {
			n := min(len(p), 8<<10)
			w.Write(p[:n])
			w.(http.Flusher).Flush()
			p = p[n:]
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func jsonBody(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, `{"id":%d,"name":"item %d","price":%d.%02d},`+"\n", i, i*7, i%97, i%100)
	}
	return b.Bytes()[:n]
}

func TestCompressThroughProxy(t *testing.T) {
	small, large := jsonBody(10<<10), jsonBody(1<<20)
	smallAddr := startTextBackend(t, small)
	largeAddr := startTextBackend(t, large)
	for _, tc := range []struct {
		name, addr, path, accept string
		want                     []byte
		encoding                 string
	}{
		{"whole, gzip", smallAddr, "/", "gzip", small, "gzip"},
		{"whole, zstd", smallAddr, "/", "gzip, zstd", small, "zstd"},
		{"whole, not asked", smallAddr, "/", "identity", small, ""},
		{"streamed with a length, gzip", largeAddr, "/", "gzip", large, "gzip"},
		{"streamed chunked, zstd", largeAddr, "/pieces", "zstd", large, "zstd"},
		{"streamed chunked, not asked", largeAddr, "/pieces", "identity", large, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, harnessOpts{backends: []string{tc.addr}, site: func(s *Site) { s.Compress = compressPolicy(1024) }})
			hdr := []string{}
			if tc.accept != "" {
				hdr = append(hdr, "Accept-Encoding", tc.accept)
			}
			resp, got := hs.do("GET", tc.path, nil, hdr...)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if ce := resp.Header.Get("Content-Encoding"); ce != tc.encoding {
				t.Fatalf("Content-Encoding %q, want %q", ce, tc.encoding)
			}
			if v := resp.Header.Get("Vary"); v != "Accept-Encoding" {
				t.Errorf("Vary %q", v)
			}
			etag := `"v1"`
			if tc.encoding != "" {
				etag = `W/"v1"`
			}
			if e := resp.Header.Get("ETag"); e != etag {
				t.Errorf("ETag %s, want %s", e, etag)
			}
			if tc.encoding != "" && len(tc.want) > maxBufferedBody && resp.ContentLength != -1 {
				t.Errorf("a compressed stream has Content-Length %d", resp.ContentLength)
			}
			if tc.encoding != "" && len(tc.want) <= maxBufferedBody && resp.ContentLength != int64(len(got)) {
				t.Errorf("Content-Length %d for %d bytes", resp.ContentLength, len(got))
			}
			if d := decodeAs(t, tc.encoding, []byte(got)); !bytes.Equal(d, tc.want) {
				t.Errorf("decoded %d bytes, not the backend's %d", len(d), len(tc.want))
			}
		})
	}
}

func decodeAs(t *testing.T, encoding string, b []byte) []byte {
	t.Helper()
	var r io.Reader
	switch encoding {
	case "":
		return b
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	case "zstd":
		zr, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	default:
		t.Fatalf("no decoder for %q", encoding)
	}
	d, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: %v", encoding, err)
	}
	return d
}

// TestCompressCachedAnswer: the cache keeps the identity body and each
// answer from it is compressed (or not) for its own client.
func TestCompressCachedAnswer(t *testing.T) {
	body := jsonBody(20 << 10)
	c := cache.New(1<<20, 64<<10, cache.Options{XCache: true})
	hs := newHarness(t, harnessOpts{backends: []string{startTextBackend(t, body, "Cache-Control", "max-age=60")}, cache: c,
		site: func(s *Site) { s.Compress = compressPolicy(1024) }})
	for i, accept := range []string{"gzip", "identity", "zstd", "gzip"} {
		resp, got := hs.do("GET", "/obj", nil, "Accept-Encoding", accept)
		want := accept
		if accept == "identity" {
			want = ""
		}
		if ce := resp.Header.Get("Content-Encoding"); ce != want {
			t.Fatalf("request %d (%s): Content-Encoding %q (X-Cache %s)", i, accept, ce, resp.Header.Get("X-Cache"))
		}
		if x := resp.Header.Get("X-Cache"); (i == 0) != (x == "MISS") {
			t.Errorf("request %d: X-Cache %s", i, x)
		}
		if d := decodeAs(t, want, []byte(got)); !bytes.Equal(d, body) {
			t.Errorf("request %d: decoded %d bytes", i, len(d))
		}
	}
}

// TestCompressHead: a HEAD's answer says what a GET's would, without a
// length it cannot know.
func TestCompressHead(t *testing.T) {
	hs := newHarness(t, harnessOpts{backends: []string{startTextBackend(t, jsonBody(10<<10))}, site: func(s *Site) { s.Compress = compressPolicy(1024) }})
	resp, got := hs.do("HEAD", "/", nil, "Accept-Encoding", "br")
	if resp.Header.Get("Content-Encoding") != "br" || resp.Header.Get("ETag") != `W/"v1"` || got != "" {
		t.Errorf("HEAD: %v %q", resp.Header, got)
	}
	if resp.Header.Get("Content-Length") != "" {
		t.Errorf("HEAD: Content-Length %s", resp.Header.Get("Content-Length"))
	}
}

// compressRequest is a request through a listener with
// [listener.compress] whose answer (fasthttp's 100 bytes of text) is not
// compressed: below min_size, or not asked for.
func compressRequest(t *testing.T, minSize int64, accept string) func() {
	hs := newHarness(t, harnessOpts{backends: []string{startFastBackend(t, "Content-Type", "text/plain")}, site: func(s *Site) { s.Compress = compressPolicy(minSize) }})
	client := lbClient(hs)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI("http://lb.test/bench?x=1")
	if accept != "" {
		req.Header.Set("Accept-Encoding", accept)
	}
	return func() {
		if err := client.Do(req, resp); err != nil || resp.StatusCode() != 200 {
			t.Fatalf("status %d: %v", resp.StatusCode(), err)
		}
		if len(resp.Header.ContentEncoding()) > 0 || (minSize == 0) != strings.Contains(string(resp.Header.Peek("Vary")), "Accept-Encoding") {
			t.Fatalf("head: %s", resp.Header.Header())
		}
	}
}

// TestCompressHTTP2: the HTTP/2 front end sends compressed answers, a
// whole one with its new length and a streamed one as DATA frames
// without one.
func TestCompressHTTP2(t *testing.T) {
	small, large := jsonBody(10<<10), jsonBody(1<<20)
	hs := newHarness(t, harnessOpts{backends: []string{startTextBackend(t, large)}, site: func(s *Site) { s.Compress = compressPolicy(1024) }})
	hsSmall := newHarness(t, harnessOpts{backends: []string{startTextBackend(t, small)}, site: func(s *Site) { s.Compress = compressPolicy(1024) }})
	for _, tc := range []struct {
		hs   *harness
		path string
		want []byte
	}{{hsSmall, "/", small}, {hs, "/", large}, {hs, "/pieces", large}} {
		client, base := h2Front(t, tc.hs, 1<<20)
		req, _ := http.NewRequest("GET", base+tc.path, nil)
		req.Header.Set("Accept-Encoding", "zstd")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.ProtoMajor != 2 || resp.Header.Get("Content-Encoding") != "zstd" {
			t.Fatalf("%s: %s, Content-Encoding %q", tc.path, resp.Proto, resp.Header.Get("Content-Encoding"))
		}
		if len(tc.want) > maxBufferedBody {
			if resp.ContentLength != -1 {
				t.Errorf("%d bytes streamed with Content-Length %d", len(tc.want), resp.ContentLength)
			}
		} else if resp.ContentLength != int64(len(b)) {
			t.Errorf("Content-Length %d for %d bytes", resp.ContentLength, len(b))
		}
		if d := decodeAs(t, "zstd", b); !bytes.Equal(d, tc.want) {
			t.Errorf("%s: decoded %d bytes, not %d", tc.path, len(d), len(tc.want))
		}
	}
}

// TestCompressHTTP10: a compressed stream reaches an HTTP/1.0 client,
// which cannot read chunked encoding, delimited by the connection's
// close.
func TestCompressHTTP10(t *testing.T) {
	large := jsonBody(256 << 10)
	hs := newHarness(t, harnessOpts{backends: []string{startTextBackend(t, large)}, site: func(s *Site) { s.Compress = compressPolicy(1024) }})
	c, err := hs.ln.DialWithLocalAddr(clientAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /pieces HTTP/1.0\r\nHost: lb.test\r\nAccept-Encoding: gzip\r\n\r\n")
	raw, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	head, b, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok || !bytes.Contains(head, []byte("Content-Encoding: gzip")) || bytes.Contains(head, []byte("Transfer-Encoding")) {
		t.Fatalf("head:\n%s", head)
	}
	if d := decodeAs(t, "gzip", b); !bytes.Equal(d, large) {
		t.Errorf("decoded %d bytes, not %d", len(d), len(large))
	}
}
