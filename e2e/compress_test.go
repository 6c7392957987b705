package e2e

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
)

// compressBackend serves /page (20 KiB of HTML with a strong ETag and
// Vary: Origin), /stream (1 MiB of JSON written in flushed 8 KiB pieces:
// chunked, so lb streams it), /small (100 bytes) and /png (an image
// type, not compressed).
func compressBackend(t *testing.T) (addr string, page, stream []byte) {
	t.Helper()
	var b bytes.Buffer
	for i := 0; b.Len() < 20<<10; i++ {
		fmt.Fprintf(&b, "<li class=\"item\">Item %d: <a href=\"/items/%d\">details</a></li>\n", i, i)
	}
	page = b.Bytes()[:20<<10]
	b = bytes.Buffer{}
	for i := 0; b.Len() < 1<<20; i++ {
		fmt.Fprintf(&b, `{"id":%d,"user":"user%d","amount":%d.%02d,"ok":%t}`+"\n", i, i%1000, i%9973, i%100, i%3 == 0)
	}
	stream = b.Bytes()[:1<<20]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			io.WriteString(w, "ok")
		case "/page":
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("ETag", `"page-v1"`)
			w.Header().Set("Vary", "Origin")
			w.Write(page)
		case "/stream":
			w.Header().Set("Content-Type", "application/json")
			for p := stream; len(p) > 0; {
				n := min(len(p), 8<<10)
				w.Write(p[:n])
				w.(http.Flusher).Flush()
				p = p[n:]
			}
		case "/small":
			w.Header().Set("Content-Type", "text/plain")
			w.Write(page[:100])
		case "/png":
			w.Header().Set("Content-Type", "image/png")
			w.Write(page)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), page, stream
}

// startCompressLB runs lb with a TLS listener (HTTP/1.1 and HTTP/2) that
// compresses, in front of addr.
func startCompressLB(t *testing.T, addr string) (*lbProc, *testCerts) {
	t.Helper()
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	cfg := affinityConfig(`  [listener.compress]
  algorithms = ["zstd", "br", "gzip"]
  min_size = "1KiB"`, "", `  check = "http"
  interval = "1s"`, `  [[pool.backend]]
  address = "`+addr+`"`)
	return startLB(t, dir, cfg), certs
}

// decodeBody decodes a body coded as encoding with Go's decoders.
func decodeBody(t *testing.T, encoding string, b []byte) []byte {
	t.Helper()
	var r io.Reader = bytes.NewReader(b)
	switch encoding {
	case "":
	case "gzip":
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		r = zr
	case "br":
		r = brotli.NewReader(r)
	case "zstd":
		zr, err := zstd.NewReader(r)
		if err != nil {
			t.Fatalf("zstd: %v", err)
		}
		defer zr.Close()
		r = zr
	default:
		t.Fatalf("unexpected Content-Encoding %q", encoding)
	}
	d, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decoding %s: %v", encoding, err)
	}
	return d
}

// TestCompressGoClients: each coding, over HTTP/1.1 and HTTP/2, decoded
// back to the backend's bytes; identity when not asked; a 1 MiB stream;
// Vary merged and the ETag made weak; the metrics and status.json.
func TestCompressGoClients(t *testing.T) {
	addr, page, stream := compressBackend(t)
	p, certs := startCompressLB(t, addr)
	for _, h2 := range []bool{false, true} {
		c := certs.client(p.addrs["https"], true)
		tr := c.Transport.(*http.Transport)
		tr.DisableCompression = true // the test decodes, and asks for nothing when it sends no Accept-Encoding
		proto := "HTTP/1.1"
		if h2 {
			tr.ForceAttemptHTTP2 = true
			tr.TLSClientConfig.NextProtos = []string{"h2"}
			proto = "HTTP/2.0"
		}
		for _, tc := range []struct {
			path, accept, encoding string
			want                   []byte
		}{
			{"/page", "gzip", "gzip", page},
			{"/page", "br", "br", page},
			{"/page", "zstd", "zstd", page},
			{"/page", "gzip, deflate, br, zstd", "zstd", page},
			{"/page", "gzip;q=1, br;q=0.5", "gzip", page},
			{"/page", "", "", page},
			{"/page", "identity", "", page},
			{"/stream", "gzip", "gzip", stream},
			{"/stream", "br", "br", stream},
			{"/stream", "zstd", "zstd", stream},
			{"/stream", "", "", stream},
			{"/small", "gzip", "", page[:100]},
			{"/png", "gzip", "", page},
		} {
			name := fmt.Sprintf("%s %s %q", proto, tc.path, tc.accept)
			req, _ := http.NewRequest("GET", "https://www.example.com"+tc.path, nil)
			if tc.accept != "" {
				req.Header.Set("Accept-Encoding", tc.accept)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("%s: reading: %v", name, err)
			}
			if resp.Proto != proto || resp.StatusCode != 200 {
				t.Fatalf("%s: %s %d", name, resp.Proto, resp.StatusCode)
			}
			if ce := resp.Header.Get("Content-Encoding"); ce != tc.encoding {
				t.Errorf("%s: Content-Encoding %q, want %q", name, ce, tc.encoding)
				continue
			}
			if d := decodeBody(t, tc.encoding, b); !bytes.Equal(d, tc.want) {
				t.Errorf("%s: decoded %d bytes, not the backend's %d", name, len(d), len(tc.want))
			}
			if tc.encoding != "" && resp.ContentLength >= 0 && resp.ContentLength != int64(len(b)) {
				t.Errorf("%s: Content-Length %d for %d bytes", name, resp.ContentLength, len(b))
			}
			if tc.path == "/stream" && tc.encoding != "" && resp.ContentLength != -1 {
				t.Errorf("%s: a compressed stream with Content-Length %d", name, resp.ContentLength)
			}
			if tc.path == "/page" {
				if v := resp.Header.Values("Vary"); strings.Join(v, ", ") != "Origin, Accept-Encoding" {
					t.Errorf("%s: Vary %q", name, v)
				}
				etag := `"page-v1"`
				if tc.encoding != "" {
					etag = `W/"page-v1"`
				}
				if e := resp.Header.Get("ETag"); e != etag {
					t.Errorf("%s: ETag %s, want %s", name, e, etag)
				}
			}
			if tc.path == "/stream" && tc.encoding != "" {
				t.Logf("%s: 1 MiB streamed as %d bytes of %s", name, len(b), tc.encoding)
			}
		}
	}

	m := p.metricsText()
	for _, enc := range []string{"gzip", "br", "zstd"} {
		if n := metricValue(m, `lb_compressed_responses_total{encoding="`+enc+`",listener="https"}`); n < 4 {
			t.Errorf("lb_compressed_responses_total for %s: %v", enc, n)
		}
		in := metricValue(m, `lb_compression_bytes_total{direction="in",encoding="`+enc+`",listener="https"}`)
		out := metricValue(m, `lb_compression_bytes_total{direction="out",encoding="`+enc+`",listener="https"}`)
		if in < 2<<20 || out <= 0 || out >= in {
			t.Errorf("lb_compression_bytes_total for %s: in %v out %v", enc, in, out)
		}
	}
	for _, ls := range p.status().Listeners {
		if ls.Name != "https" {
			continue
		}
		if cs := ls.Compress; cs == nil || strings.Join(cs.Algorithms, ",") != "zstd,br,gzip" || cs.MinSize != 1024 || len(cs.Types) != 5 {
			t.Errorf("status.json compress: %+v", ls.Compress)
		}
	}
}

// TestCompressCurl: curl --compressed decodes lb's gzip, br and zstd
// answers, whole and streamed, over HTTP/1.1 and HTTP/2.
func TestCompressCurl(t *testing.T) {
	curl := needTool(t, "curl")
	version, _ := runCmd(t, 10*time.Second, curl, "--version")
	addr, page, stream := compressBackend(t)
	p, certs := startCompressLB(t, addr)
	port := portOf(p.addrs["https"])
	dir := t.TempDir()
	for _, enc := range []string{"gzip", "br", "zstd"} {
		feature := map[string]string{"gzip": "libz", "br": "brotli", "zstd": "zstd"}[enc]
		if !strings.Contains(version, feature) {
			t.Logf("curl has no %s (its --version: %s): %s not tried with curl", feature, strings.SplitN(version, "\n", 2)[0], enc)
			continue
		}
		for _, proto := range []string{"--http1.1", "--http2"} {
			for path, want := range map[string][]byte{"/page": page, "/stream": stream} {
				out := filepath.Join(dir, "body")
				hdr, err := runCmd(t, 20*time.Second, curl, "-sS", proto, "--compressed", "-H", "Accept-Encoding: "+enc,
					"--cacert", certs.dir+"/ca.pem", "--resolve", "www.example.com:"+port+":127.0.0.1",
					"-D", "-", "-o", out, "https://www.example.com:"+port+path)
				if err != nil {
					t.Fatalf("curl %s %s %s: %v\n%s", proto, enc, path, err, hdr)
				}
				if !strings.Contains(strings.ToLower(hdr), "content-encoding: "+enc) {
					t.Errorf("curl %s %s %s: not compressed:\n%s", proto, enc, path, hdr)
				}
				got, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("curl %s %s %s: %d bytes decoded, not the backend's %d", proto, enc, path, len(got), len(want))
				}
			}
		}
	}
}
