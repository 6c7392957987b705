package cache

import (
	"bytes"
	"slices"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// Entry is one stored response. It is never changed once stored (a
// revalidation stores a new one), so any number of goroutines may read
// it without a lock; before that, only its maker may call SetBody.
type Entry struct {
	Header fasthttp.ResponseHeader // without Age; hop-by-hop fields removed
	Body   []byte
	Fresh  Freshness
	// RFC 9111 4.2.3's inputs.
	Date, RequestTime, ResponseTime time.Time
	AgeValue                        time.Duration

	// Validators, copied out: a fasthttp header is not safe for
	// concurrent reads (Peek writes a scratch buffer), so a stored entry's
	// Header is only ever copied from.
	etag, lastModified []byte

	vary []varyField
	size int64
}

// varyField is a request header a variant was selected by, and its
// normalized value (see normalized).
type varyField struct {
	name  string
	value []byte
	set   bool // compared as a set of members without regard to case
}

// entryOverhead approximates the memory an entry costs beyond its body
// and head bytes.
const entryOverhead = 512

// NewEntry makes an entry of a response with head h and body, the answer
// to req, sent at requestTime and received at responseTime, copying what
// it keeps. The body may be set later, with SetBody, until the entry is
// stored.
func NewEntry(req *fasthttp.RequestHeader, h *fasthttp.ResponseHeader, body []byte, f Freshness, requestTime, responseTime time.Time) *Entry {
	e := &Entry{Fresh: f, RequestTime: requestTime, ResponseTime: responseTime}
	h.CopyTo(&e.Header)
	if len(e.Header.Peek("Date")) == 0 {
		// RFC 9110 section 6.6.1: a cache stores the time it received a
		// response without Date.
		SetDate(&e.Header, responseTime)
	}
	e.readHead(h)
	// Every Vary line names headers (RFC 9110 section 5.3), and a
	// request header sent as several lines is matched as their one
	// combined value (RFC 9111 section 4.1).
	for _, line := range e.Header.PeekAll("Vary") {
		for _, name := range bytes.Split(line, []byte(",")) {
			if name = bytes.TrimSpace(name); len(name) > 0 {
				set := bytes.EqualFold(name, []byte("Accept-Language"))
				e.vary = append(e.vary, varyField{name: string(name), set: set, value: normalized(req.PeekAll(string(name)), set)})
			}
		}
	}
	e.SetBody(append([]byte(nil), body...))
	return e
}

// readHead takes what the entry needs to know of its stored head: the
// Date, the Age the response arrived with (from h; the stored head keeps
// none) and the validators.
func (e *Entry) readHead(h *fasthttp.ResponseHeader) {
	e.Header.Del("Age")
	e.Date = httpDate(e.Header.Peek("Date"))
	e.AgeValue = ageValue(h.Peek("Age"))
	if v := e.Header.Peek("ETag"); len(v) > 0 {
		e.etag = append([]byte(nil), v...)
	}
	if v := e.Header.Peek("Last-Modified"); len(v) > 0 {
		e.lastModified = append([]byte(nil), v...)
	}
}

// SetBody sets the body of an entry not yet stored; the entry keeps b.
// The head's length fields are made to match it.
func (e *Entry) SetBody(b []byte) {
	e.Body = b
	e.Header.SetContentLength(len(b))
	e.size = int64(len(e.Body)+len(e.Header.Header())) + entryOverhead
}

// Refreshed is e updated by a 304 answer to a revalidation (RFC 9111
// 4.3.4): the new head's fields replace the stored ones, the body stays,
// and the freshness is that of the updated head.
func (e *Entry) Refreshed(h *fasthttp.ResponseHeader, rc RequestControl, o Options, requestTime, responseTime time.Time) *Entry {
	n := &Entry{Body: e.Body, RequestTime: requestTime, ResponseTime: responseTime, vary: e.vary}
	e.Header.CopyTo(&n.Header)
	// A field of several lines replaces all the stored lines: the first
	// line of each name deletes, then every line is added.
	seen := map[string]bool{}
	for k, v := range h.All() {
		switch string(k) {
		case "Content-Length", "Content-Type", "Age", "Date":
			// The body's length and type are the stored ones (RFC 9111
			// section 3.2 excepts Content-Length); Age is computed; Date
			// is set below (fasthttp's setters ignore it).
			continue
		}
		if !seen[string(k)] {
			seen[string(k)] = true
			n.Header.DelBytes(k)
		}
		n.Header.AddBytesKV(k, v)
	}
	// The freshness clock restarts from the 304: its Date (or when it
	// arrived, for one without), its Age, its request and response
	// times (RFC 9111 section 4.3.4).
	date := h.Peek("Date")
	if httpDate(date).IsZero() {
		date = fasthttp.AppendHTTPDate(nil, responseTime)
	}
	SetDateValue(&n.Header, date)
	n.readHead(h)
	n.Fresh = Evaluate(rc, &n.Header, responseTime, o)
	n.size = e.size
	return n
}

// ageValue reads an Age field: its first line's first member (a list
// where one number belongs is read as its first, as "7200, 0" is by the
// caches that parse it at all); 0 when there is none or it is invalid.
func ageValue(v []byte) time.Duration {
	v, _, _ = bytes.Cut(v, []byte{','})
	a, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
	if err != nil || a <= 0 {
		return 0
	}
	return time.Duration(min(a, 1<<31-1)) * time.Second
}

// SetDate sets the Date of h to t.
func SetDate(h *fasthttp.ResponseHeader, t time.Time) {
	var buf [32]byte
	h.SetDateBytes(fasthttp.AppendHTTPDate(buf[:0], t))
}

// SetDateValue sets the Date of h to date. (fasthttp's setters ignore
// Date, which its server writes itself unless told not to, as lb's is.)
func SetDateValue(h *fasthttp.ResponseHeader, date []byte) {
	h.SetDateBytes(date)
}

// CurrentAge is the entry's age at now.
func (e *Entry) CurrentAge(now time.Time) time.Duration {
	return Age(e.Date, e.AgeValue, e.RequestTime, e.ResponseTime, now)
}

// Staleness is how long past its freshness lifetime the entry is at now;
// zero or less while fresh.
func (e *Entry) Staleness(now time.Time) time.Duration {
	return e.CurrentAge(now) - e.Fresh.Lifetime
}

// ModTime is the time a client's If-Modified-Since is compared with: the
// entry's Last-Modified, or without one its Date (RFC 9111 section
// 4.3.2); zero when neither is a date.
func (e *Entry) ModTime() time.Time {
	if len(e.lastModified) > 0 {
		return httpDate(e.lastModified)
	}
	return e.Date
}

// Validators returns the entry's ETag and Last-Modified (nil if none).
func (e *Entry) Validators() (etag, lastModified []byte) {
	return e.etag, e.lastModified
}

// WriteTo answers with the entry: its head with Age, and its body
// (shared, not copied: it is never changed).
func (e *Entry) WriteTo(resp *fasthttp.Response, now time.Time) {
	resp.Reset()
	e.Header.CopyTo(&resp.Header)
	var buf [20]byte
	resp.Header.SetCanonical(hAge, strconv.AppendInt(buf[:0], int64(e.CurrentAge(now)/time.Second), 10))
	resp.SetBodyRaw(e.Body)
}

var hAge = []byte("Age")

// Matches reports whether req selects this variant.
func (e *Entry) Matches(req *fasthttp.RequestHeader) bool {
	for i, f := range e.vary {
		if !e.vary[i].matches(req.PeekAll(f.name)) {
			return false
		}
	}
	return true
}

// normalized is the value of a request header of these lines as a
// variant keeps it: its list members (RFC 9110 section 5.6.1) trimmed and
// joined by ", ", so that lines, spacing and empty members make no
// difference (RFC 9111 section 4.1 allows such normalization). With set
// (Accept-Language, whose members are case-insensitive language ranges
// with weights) members are also lower-cased, stripped of spaces and
// sorted, so that "en, de" and "De,EN" select the same variant.
func normalized(lines [][]byte, set bool) []byte {
	var ms [][]byte
	eachMember(lines, func(m []byte) bool {
		if set {
			m = bytes.ToLower(bytes.ReplaceAll(bytes.ReplaceAll(m, []byte(" "), nil), []byte("\t"), nil))
		}
		ms = append(ms, m)
		return true
	})
	if set {
		slices.SortFunc(ms, bytes.Compare)
	}
	return bytes.Join(ms, []byte(", "))
}

// eachMember calls f with each non-empty list member of lines, trimmed,
// until f returns false; it reports whether f never did.
func eachMember(lines [][]byte, f func(m []byte) bool) bool {
	for _, v := range lines {
		for len(v) > 0 {
			var m []byte
			m, v, _ = bytes.Cut(v, []byte{','})
			if m = bytes.TrimSpace(m); len(m) > 0 && !f(m) {
				return false
			}
		}
	}
	return true
}

// matches reports whether a request header of these lines has the
// normalized value want, without building it (this runs on every hit).
func (f *varyField) matches(lines [][]byte) bool {
	want := f.value
	if !f.set {
		ok := eachMember(lines, func(m []byte) bool {
			if !bytes.HasPrefix(want, m) {
				return false
			}
			want = want[len(m):]
			if len(want) > 0 {
				if !bytes.HasPrefix(want, []byte(", ")) {
					return false
				}
				want = want[2:]
			}
			return true
		})
		return ok && len(want) == 0
	}
	n := 0
	ok := eachMember(lines, func(m []byte) bool {
		n++
		for w := want; len(w) > 0; {
			var s []byte
			s, w, _ = bytes.Cut(w, []byte(", "))
			if equalFoldNoSpace(m, s) {
				return true
			}
		}
		return false
	})
	if !ok {
		return false
	}
	if len(want) > 0 {
		n -= bytes.Count(want, []byte(", ")) + 1
	}
	return n == 0
}

// equalFoldNoSpace reports whether a, without its spaces and tabs, is b
// without regard to ASCII case.
func equalFoldNoSpace(a, b []byte) bool {
	j := 0
	for _, c := range a {
		if c == ' ' || c == '\t' {
			continue
		}
		if j >= len(b) || lower(c) != lower(b[j]) {
			return false
		}
		j++
	}
	return j == len(b)
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// sameVariant: a and b answer the same requests.
func sameVariant(a, b *Entry) bool {
	if len(a.vary) != len(b.vary) {
		return false
	}
	for i := range a.vary {
		if a.vary[i].name != b.vary[i].name || !bytes.Equal(a.vary[i].value, b.vary[i].value) {
			return false
		}
	}
	return true
}
