package h2

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHeadBlockAgreesWithXNet decodes header blocks with headBlock and
// with golang.org/x/net's MetaHeadersFrame, which lb used before it
// decoded straight into the request head: both must refuse the same
// blocks the same way.
func TestHeadBlockAgreesWithXNet(t *testing.T) {
	const maxList = 1024
	req := []string{":method", "GET", ":scheme", "https", ":authority", "a.example", ":path", "/x"}
	cases := []struct {
		name   string
		fields []string
		want   string // ok, stream (reset the stream), conn (end the connection), 431, malformed
	}{
		{"plain request", req, "ok"},
		{"with fields", append(req, "accept", "*/*", "cookie", "a=1", "cookie", "b=2"), "ok"},
		{"upper-case name", append(req, "X-Foo", "1"), "stream"},
		{"space in name", append(req, "x foo", "1"), "stream"},
		{"empty name", append(req, "", "1"), "stream"},
		{"NUL in value", append(req, "x-foo", "a\x00b"), "stream"},
		{"LF in value", append(req, "x-foo", "a\nb"), "stream"},
		{"pseudo after regular", append([]string{":method", "GET", "accept", "*/*"}, req[2:]...), "stream"},
		{"unknown pseudo", append([]string{":foo", "1"}, req...), "stream"},
		{"repeated :path", append([]string{":path", "/y"}, req...), "stream"},
		{":status in a request", append([]string{":status", "200"}, req...), "stream"},
		{"connection field", append(req, "connection", "close"), "malformed"},
		{"te: gzip", append(req, "te", "gzip"), "malformed"},
		{"te: trailers", append(req, "te", "trailers"), "ok"},
		{"no :scheme", []string{":method", "GET", ":path", "/"}, "malformed"},
		{"list too long", append(req, "x-big", strings.Repeat("v", maxList)), "431"},
		{"trailer fields count apart", append(req, "x-big", strings.Repeat("v", 700), "trailer", strings.Repeat("a,", 10)+"b"), "ok"},
		{"block over twice the limit", append(req, "x-big", strings.Repeat("v", 3000)), "conn"},
		{"too many trailer fields", append(req, "trailer", strings.Repeat("a,", 40)+"b"), "431"},
	}
	a := NewServer(nil, Options{MaxHead: 8192, MaxBody: 1 << 20})
	for _, tc := range cases {
		// Each case on fresh decoders: literal fields with indexing
		// change the dynamic table.
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for i := 0; i+1 < len(tc.fields); i += 2 {
			if err := enc.WriteField(hpack.HeaderField{Name: tc.fields[i], Value: tc.fields[i+1]}); err != nil {
				t.Fatal(err)
			}
		}
		var wire bytes.Buffer
		if err := http2.NewFramer(&wire, nil).WriteHeaders(http2.HeadersFrameParam{
			StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true,
		}); err != nil {
			t.Fatal(err)
		}

		xfr := http2.NewFramer(nil, bytes.NewReader(wire.Bytes()))
		xfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		xfr.MaxHeaderListSize = maxList
		xf, xerr := xfr.ReadFrame()
		var x string
		var se http2.StreamError
		var ce http2.ConnectionError
		switch {
		case errors.As(xerr, &se):
			x = "stream"
		case errors.As(xerr, &ce):
			x = "conn"
		case xerr != nil:
			t.Fatalf("%s: x/net: %v", tc.name, xerr)
		case xf.(*http2.MetaHeadersFrame).Truncated:
			x = "431"
		default:
			x = "ok"
		}

		fr := http2.NewFramer(nil, bytes.NewReader(wire.Bytes()))
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		hb := newHeadBlock(maxList)
		hb.start(nil)
		var got string
		if err := hb.decode(f.(*http2.HeadersFrame), fr); errors.As(err, &ce) {
			got = "conn"
		} else if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		} else if hb.refused() {
			got = "stream"
		} else {
			var ctx fasthttp.RequestCtx
			_, err := hb.request(&ctx, a)
			switch {
			case errors.Is(err, errMalformed):
				got = "malformed"
			case errors.Is(err, ErrHeadTooLarge):
				got = "431"
			case err != nil:
				t.Fatalf("%s: %v", tc.name, err)
			default:
				got = "ok"
			}
		}
		if got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
		// x/net leaves request rules to the server: it passes what lb
		// calls malformed, and resets streams with :status.
		xwant := tc.want
		if xwant == "malformed" {
			xwant = "ok"
		}
		if x != xwant {
			t.Errorf("%s: x/net says %s, headBlock %s", tc.name, x, got)
		}
	}
}

// FuzzHeadBlock decodes arbitrary header blocks with headBlock and with
// x/net's MetaHeadersFrame and lb's request rules on top (what lb did
// before headBlock): both must end the connection, reset the stream,
// answer 431 or accept alike, and an accepted request must carry the
// same method, target, host, cookies and fields.
func FuzzHeadBlock(f *testing.F) {
	req := []string{":method", "GET", ":scheme", "https", ":authority", "a.example", ":path", "/x"}
	for _, fields := range [][]string{
		req,
		append(req, "accept", "*/*", "cookie", "a=1", "cookie", "b=2", "x-big", strings.Repeat("v", 900)),
		append(req, "connection", "close"),
		append([]string{":status", "200"}, req...),
		append(req, "Upper", "x"),
		{":method", "CONNECT", ":authority", "a.example:443"},
		append(req, "host", "b.example", "te", "trailers", "expect", "100-continue", "content-length", "0"),
	} {
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for i := 0; i+1 < len(fields); i += 2 {
			if err := enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]}); err != nil {
				f.Fatal(err)
			}
		}
		f.Add(block.Bytes())
	}
	const maxList = 1024
	a := NewServer(nil, Options{MaxHead: 8192, MaxBody: 1 << 20})
	f.Fuzz(func(t *testing.T, block []byte) {
		var wire bytes.Buffer
		if err := http2.NewFramer(&wire, nil).WriteHeaders(http2.HeadersFrameParam{
			StreamID: 1, BlockFragment: block, EndStream: true, EndHeaders: true,
		}); err != nil {
			t.Fatal(err)
		}

		// x/net, and the rules lb applied to what it decoded.
		xfr := http2.NewFramer(nil, bytes.NewReader(wire.Bytes()))
		xfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		xfr.MaxHeaderListSize = maxList
		xf, xerr := xfr.ReadFrame()
		var se http2.StreamError
		var ce http2.ConnectionError
		var want string
		var mh *http2.MetaHeadersFrame
		switch {
		case errors.As(xerr, &ce):
			want = "conn"
		case errors.As(xerr, &se):
			want = "reset"
		case xerr != nil:
			t.Fatalf("x/net: %v", xerr)
		default:
			mh = xf.(*http2.MetaHeadersFrame)
			want = oldRequestRules(mh)
		}

		fr := http2.NewFramer(nil, bytes.NewReader(wire.Bytes()))
		hf, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		hb := newHeadBlock(maxList)
		hb.start(nil)
		var ctx fasthttp.RequestCtx
		var got string
		switch err := hb.decode(hf.(*http2.HeadersFrame), fr); {
		case errors.As(err, &ce):
			got = "conn"
		case err != nil:
			t.Fatal(err)
		case hb.refused():
			got = "reset"
		default:
			switch _, err := hb.request(&ctx, a); {
			case errors.Is(err, errMalformed):
				got = "reset"
			case errors.Is(err, ErrHeadTooLarge):
				got = "431"
			case err != nil:
				got = "400" // fasthttp refused the head: ServeError answers
			default:
				got = "ok"
			}
		}
		if want == "ok" && got == "400" {
			return // a head fasthttp cannot parse either way
		}
		if got != want {
			t.Fatalf("headBlock %s, x/net and lb's rules %s", got, want)
		}
		if got != "ok" || string(ctx.Request.Header.Method()) == fasthttp.MethodConnect {
			return
		}
		// The same request.
		pseudo := map[string]string{}
		for _, hf := range mh.PseudoFields() {
			pseudo[hf.Name] = hf.Value
		}
		authority := pseudo[":authority"]
		var cookies []string
		for _, hf := range mh.RegularFields() {
			switch hf.Name {
			case "host":
				if authority == "" {
					authority = hf.Value
				}
			case "cookie":
				cookies = append(cookies, hf.Value)
			}
		}
		h := &ctx.Request.Header
		if string(h.Method()) != pseudo[":method"] || string(h.RequestURI()) != pseudo[":path"] ||
			string(h.Host()) != authority || string(h.Peek("Cookie")) != strings.Join(cookies, "; ") {
			t.Fatalf("request %q %q host %q cookie %q; x/net had %v, cookies %q",
				h.Method(), h.RequestURI(), h.Host(), h.Peek("Cookie"), pseudo, cookies)
		}
	})
}

// oldRequestRules is what lb made of a header block x/net accepted,
// before headBlock: reset (malformed), 431 (over the list size), or ok.
func oldRequestRules(mh *http2.MetaHeadersFrame) string {
	var method, path, scheme, authority string
	for _, hf := range mh.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		default:
			return "reset"
		}
	}
	if !httpguts.ValidHeaderFieldName(method) {
		return "reset"
	}
	if method == fasthttp.MethodConnect {
		if scheme != "" || path != "" || authority == "" {
			return "reset"
		}
		return "ok"
	}
	if scheme == "" || !validPath(path) {
		return "reset"
	}
	if mh.Truncated {
		return "431"
	}
	declared := int64(-1)
	for _, hf := range mh.RegularFields() {
		switch hf.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return "reset"
		case "te":
			if hf.Value != "trailers" {
				return "reset"
			}
		case "content-length":
			n, err := strconv.ParseInt(hf.Value, 10, 64)
			if err != nil || n < 0 || (declared >= 0 && declared != n) {
				return "reset"
			}
			declared = n
		}
	}
	return "ok"
}
