package proxy

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
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
	a := NewHTTP2(nil, HTTP2Options{MaxHead: 8192, MaxBody: 1 << 20})
	for _, tc := range cases {
		// Each case on fresh decoders: literal fields with indexing
		// change the dynamic table.
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for i := 0; i+1 < len(tc.fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: tc.fields[i], Value: tc.fields[i+1]}) //nolint:errcheck
		}
		var wire bytes.Buffer
		http2.NewFramer(&wire, nil).WriteHeaders(http2.HeadersFrameParam{ //nolint:errcheck
			StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true,
		})

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
		} else if hb.invalid {
			got = "stream"
		} else {
			var ctx fasthttp.RequestCtx
			_, err := hb.request(&ctx, a)
			switch {
			case errors.Is(err, errMalformed):
				got = "malformed"
			case errors.Is(err, errHeadTooLarge):
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
