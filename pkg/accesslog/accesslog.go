// Package accesslog writes lb's access log: a line per request, in the
// format the operator picked (lb's text and JSON, the same fields as lb's
// own log, or Apache's and NGINX's combined format that log analysers
// read), appended to a Writer that writes on its own goroutine. Lines
// are built without allocating, from the request as the proxy holds it.
package accesslog

import (
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Format is a line format.
type Format int

const (
	// Text is lb's log format: "TIME [INFO]  access: request: key=value
	// ...", values quoted where they hold anything but - through ~.
	Text Format = iota
	// JSON is one object per line, with lb's own log's "@"-fields.
	JSON
	// Combined is Apache's and NGINX's combined format: client address,
	// time, request line, status, bytes, referrer and user agent.
	Combined
)

// ParseFormat is the Format named name: "text", "json" or "combined".
func ParseFormat(name string) (Format, bool) {
	switch name {
	case "text":
		return Text, true
	case "json":
		return JSON, true
	case "combined":
		return Combined, true
	}
	return 0, false
}

// Request is what one request's line says. Byte slices are read during
// Log.Request only, so they may point into the request's buffers.
type Request struct {
	Listener string
	Client   net.Addr
	TLS      string // the TLS version ("1.3"), "" for plaintext
	Proto    string // "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"
	Method   []byte
	Host     []byte
	URI      []byte
	Status   int
	Bytes    int // the response body's length; -1 when not known
	Pool     string
	Backend  string
	Attempts int
	Duration time.Duration
	// Cache is how a pool's cache answered ("HIT", ...); CacheSet says
	// the pool has a cache, so that the field is written, empty or not.
	Cache    string
	CacheSet bool
	Err      error
	// Time is when the request ended (the line's time); zero for now.
	Time time.Time
	// Referer and UserAgent, for the combined format.
	Referer, UserAgent []byte
}

// Log formats lines and hands them to its Writer.
type Log struct {
	format Format
	w      *Writer
}

// New is a Log writing lines in format to w.
func New(format Format, w *Writer) *Log { return &Log{format: format, w: w} }

// Format is the Log's line format.
func (l *Log) Format() Format { return l.format }

// Writer is where the Log's lines go.
func (l *Log) Writer() *Writer { return l.w }

// lineBufs holds the buffers lines are built in before they are handed
// to the Writer.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Request writes r's line.
func (l *Log) Request(r *Request) {
	bp := lineBufs.Get().(*[]byte)
	b := (*bp)[:0]
	now := r.Time
	if now.IsZero() {
		now = time.Now()
	}
	switch l.format {
	case JSON:
		b = appendJSON(b, now, r)
	case Combined:
		b = appendCombined(b, now, r)
	default:
		b = appendText(b, now, r)
	}
	_, _ = l.w.Write(b) // never fails: a line it cannot take is counted
	if cap(b) <= 16<<10 {
		*bp = b
		lineBufs.Put(bp)
	}
}

// appendText is hclog's text format, as lb's own log writes it.
func appendText(b []byte, now time.Time, r *Request) []byte {
	b = appendTextTime(b, now)
	b = append(b, " [INFO]  access: request:"...)
	b = textField(b, "listener", r.Listener)
	b = append(b, " client="...)
	start := len(b)
	b = appendAddrTo(b, r.Client, true)
	b = quoteText(b, start)
	b = textField(b, "tls", r.TLS)
	b = textField(b, "proto", r.Proto)
	b = textField(b, "method", r.Method)
	b = textField(b, "host", r.Host)
	b = textField(b, "uri", r.URI)
	b = append(b, " status="...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, " bytes="...)
	b = strconv.AppendInt(b, int64(r.Bytes), 10)
	b = textField(b, "pool", r.Pool)
	b = textField(b, "backend", r.Backend)
	b = append(b, " attempts="...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	b = append(b, " duration="...)
	b = appendDuration(b, r.Duration)
	if r.CacheSet {
		b = textField(b, "cache", r.Cache)
	}
	if r.Err != nil {
		b = textField(b, "error", r.Err.Error())
	}
	return append(b, '\n')
}

// textField appends " key=value", the value quoted as hclog quotes it
// (see quoteText).
func textField[S string | []byte](b []byte, key string, v S) []byte {
	b = append(b, ' ')
	b = append(b, key...)
	b = append(b, '=')
	start := len(b)
	b = append(b, v...)
	return quoteText(b, start)
}

// quoteText quotes b[start:], the value just appended, where hclog
// would: an empty value as "", and a value with anything outside -
// through ~ in double quotes, with quotes, backslashes and bytes that
// are not printable ASCII escaped (\" \\ \xHH), so that a line is always
// one line and no client can write terminal escapes into it.
func quoteText(b []byte, start int) []byte {
	v := b[start:]
	if len(v) == 0 {
		return append(b, `""`...)
	}
	quote := false
	for _, c := range v {
		if c < '-' || c > '~' {
			quote = true
			break
		}
	}
	if !quote {
		return b
	}
	extra := 2
	for _, c := range v {
		switch {
		case c == '"' || c == '\\':
			extra++
		case c < ' ' || c > '~':
			extra += 3
		}
	}
	// Make room, then write the value back from its end, quoted: each
	// byte is read before anything is written over it.
	n := len(v)
	b = append(b, make([]byte, extra)...)
	out := b[start:]
	w := len(out) - 1
	out[w] = '"'
	w--
	for i := n - 1; i >= 0; i-- {
		c := out[i]
		switch {
		case c == '"' || c == '\\':
			out[w], out[w-1] = c, '\\'
			w -= 2
		case c >= ' ' && c <= '~':
			out[w] = c
			w--
		default:
			out[w], out[w-1], out[w-2], out[w-3] = hex[c&15], hex[c>>4], 'x', '\\'
			w -= 4
		}
	}
	out[w] = '"'
	return b
}

const hex = "0123456789abcdef"

// appendJSON is one JSON object with lb's own log's "@"-fields, keys in
// the order encoding/json would sort them (as hclog writes them).
func appendJSON(b []byte, now time.Time, r *Request) []byte {
	b = append(b, `{"@level":"info","@message":"request","@module":"access","@timestamp":"`...)
	b = appendJSONTime(b, now)
	b = append(b, `","attempts":`...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	b = jsonField(b, "backend", r.Backend)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, int64(r.Bytes), 10)
	if r.CacheSet {
		b = jsonField(b, "cache", r.Cache)
	}
	b = append(b, `,"client":"`...)
	b = appendAddrTo(b, r.Client, true)
	b = append(b, `","duration":"`...)
	b = appendDuration(b, r.Duration)
	b = append(b, '"')
	if r.Err != nil {
		b = jsonField(b, "error", r.Err.Error())
	}
	b = jsonField(b, "host", r.Host)
	b = jsonField(b, "listener", r.Listener)
	b = jsonField(b, "method", r.Method)
	b = jsonField(b, "pool", r.Pool)
	b = jsonField(b, "proto", r.Proto)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = jsonField(b, "tls", r.TLS)
	b = jsonField(b, "uri", r.URI)
	return append(b, "}\n"...)
}

// jsonField appends ,"key":"value", the value escaped for JSON.
func jsonField[S string | []byte](b []byte, key string, v S) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	b = append(b, `":"`...)
	b = appendJSONString(b, v)
	return append(b, '"')
}

// appendJSONString appends s escaped for a JSON string: quotes,
// backslashes and control bytes escaped, and bytes that are not UTF-8 as
// U+FFFD, as encoding/json does.
func appendJSONString[S string | []byte](b []byte, s S) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < 0x80 {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < ' ':
				b = append(b, `\u00`...)
				b = append(b, hex[c>>4], hex[c&15])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		if n := runeLen(s[i:]); n > 0 {
			b = append(b, s[i:i+n]...)
			i += n
		} else {
			b = append(b, `\ufffd`...)
			i++
		}
	}
	return b
}

// runeLen is the length of the valid UTF-8 sequence s starts with (its
// first byte not ASCII), or 0 if it does not start with one.
func runeLen[S string | []byte](s S) int {
	c := s[0]
	n, lo, hi := 0, byte(0x80), byte(0xbf)
	switch {
	case c >= 0xc2 && c <= 0xdf:
		n = 2
	case c == 0xe0:
		n, lo = 3, 0xa0 // not overlong
	case c == 0xed:
		n, hi = 3, 0x9f // not a surrogate
	case c >= 0xe1 && c <= 0xef:
		n = 3
	case c == 0xf0:
		n, lo = 4, 0x90 // not overlong
	case c == 0xf4:
		n, hi = 4, 0x8f // not past U+10FFFF
	case c >= 0xf1 && c <= 0xf3:
		n = 4
	default:
		return 0
	}
	if len(s) < n || s[1] < lo || s[1] > hi {
		return 0
	}
	for i := 2; i < n; i++ {
		if s[i] < 0x80 || s[i] > 0xbf {
			return 0
		}
	}
	return n
}

// appendCombined is the combined format, as NGINX writes it:
//
//	client - - [day/Mon/year:hh:mm:ss +zone] "request line" status bytes "referrer" "user agent"
//
// with "-" for what is not known (a request refused before its head
// was read has no request line; a body whose length is not known when
// the line is written has "-" bytes), and quotes, backslashes and bytes
// that are not printable ASCII escaped as \xHH, as NGINX does.
func appendCombined(b []byte, now time.Time, r *Request) []byte {
	b = appendAddrTo(b, r.Client, false)
	b = append(b, " - - ["...)
	b = appendCombinedTime(b, now)
	b = append(b, `] "`...)
	if len(r.Method) == 0 {
		b = append(b, '-')
	} else {
		b = appendCombinedString(b, r.Method)
		b = append(b, ' ')
		b = appendCombinedString(b, r.URI)
		b = append(b, ' ')
		b = append(b, r.Proto...)
	}
	b = append(b, `" `...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, ' ')
	if r.Bytes < 0 {
		b = append(b, '-')
	} else {
		b = strconv.AppendInt(b, int64(r.Bytes), 10)
	}
	b = append(b, ` "`...)
	b = appendCombinedOrDash(b, r.Referer)
	b = append(b, `" "`...)
	b = appendCombinedOrDash(b, r.UserAgent)
	return append(b, "\"\n"...)
}

func appendCombinedOrDash(b, v []byte) []byte {
	if len(v) == 0 {
		return append(b, '-')
	}
	return appendCombinedString(b, v)
}

func appendCombinedString(b, v []byte) []byte {
	for _, c := range v {
		if c < ' ' || c > '~' || c == '"' || c == '\\' {
			b = append(b, '\\', 'x', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return b
}

// appendAddrTo appends a client address, with its port or without.
// Addresses lb's listeners give are *net.TCPAddr, appended without
// allocating; others are formatted by their String method.
func appendAddrTo(b []byte, a net.Addr, withPort bool) []byte {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			break
		}
		ip = ip.Unmap()
		if withPort {
			return netip.AddrPortFrom(ip, uint16(a.Port)).AppendTo(b)
		}
		return ip.AppendTo(b)
	case nil:
		return append(b, '-')
	}
	s := a.String()
	if !withPort {
		if host, _, err := net.SplitHostPort(s); err == nil {
			s = host
		}
	}
	return append(b, s...)
}
