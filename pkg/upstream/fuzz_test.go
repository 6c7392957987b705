package upstream

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/offloadlb/lb/pkg/httphead"
)

// FuzzWriteRequest checks writeRequest, which RoundTrip writes requests
// with, against fasthttp's Request.Write: any request fasthttp's server
// reads, in the form RoundTrip takes (target and Host from the parsed
// URI, no userinfo), is written as the same bytes, or fails alike.
// pkg/proxy's FuzzPrepareRequest checks that the proxy leaves requests in
// that form.
func FuzzWriteRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: t\r\nAccept: */*\r\nCookie: a=b\r\n\r\n",
		"GET /x HTTP/1.0\r\n\r\n",
		"HEAD /x HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"POST /form HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=1&b=2",
		"POST /empty HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
		"PUT /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
		"DELETE /x HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET http://b.example/p?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET /a/../b/./c//d%2F HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var req fasthttp.Request
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		if err := req.Header.Read(br); err != nil {
			return
		}
		var u fasthttp.URI
		if err := u.Parse(req.Header.Host(), req.Header.RequestURI()); err != nil {
			return
		}
		if err := req.ContinueReadBody(br, 64<<10, false); err != nil {
			return
		}
		// The form RoundTrip takes.
		uri := req.URI()
		if len(uri.Username()) > 0 || len(uri.Password()) > 0 {
			return
		}
		uri.DisablePathNormalizing = true
		req.Header.SetHostBytes(uri.Host())
		req.Header.SetRequestURIBytes(uri.RequestURI())
		req.Header.SetNoDefaultContentType(true)

		var ref fasthttp.Request
		req.CopyTo(&ref)
		var out, want bytes.Buffer
		bw := bufio.NewWriter(&out)
		err := writeRequest(bw, &req)
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		bw = bufio.NewWriter(&want)
		refErr := ref.Write(bw)
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		if (err == nil) != (refErr == nil) {
			t.Fatalf("writeRequest: %v; Request.Write: %v", err, refErr)
		}
		if len(req.Header.PeekTrailerKeys()) > 0 {
			// writeChunked: no Trailer announcement, no field lb owns
			// among the trailer fields.
			want = *bytes.NewBuffer(withoutOwnTrailers(want.Bytes()))
		}
		if err == nil && !bytes.Equal(out.Bytes(), want.Bytes()) {
			t.Fatalf("writeRequest wrote\n%q\nRequest.Write writes\n%q", out.Bytes(), want.Bytes())
		}
	})
}

// withoutOwnTrailers is what Request.Write wrote for a chunked request
// with trailers, less its Trailer field and the trailer fields
// httphead.Reserved names.
func withoutOwnTrailers(b []byte) []byte {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return b
	}
	head, rest := b[:end+2], b[end+2:]
	var out []byte
	for _, line := range bytes.SplitAfter(head, []byte("\r\n")) {
		if !bytes.HasPrefix(line, []byte("Trailer: ")) {
			out = append(out, line...)
		}
	}
	last := bytes.LastIndex(rest, []byte("\r\n0\r\n"))
	if last < 0 {
		return append(out, rest...)
	}
	out = append(out, rest[:last+5]...)
	for _, line := range bytes.SplitAfter(rest[last+5:], []byte("\r\n")) {
		if i := bytes.IndexByte(line, ':'); i > 0 && httphead.Reserved(line[:i]) {
			continue
		}
		out = append(out, line...)
	}
	return out
}
