package compress

// Encoding is a content coding lb can send (RFC 9110 section 8.4.1).
// The zero value is Identity: no coding.
type Encoding uint8

// The codings lb compresses with, and Identity for none.
const (
	Identity Encoding = iota
	Zstd              // RFC 8878
	Brotli            // RFC 7932, "br"
	Gzip              // RFC 1952
	numEncodings
)

var encodingNames = [numEncodings]string{Identity: "identity", Zstd: "zstd", Brotli: "br", Gzip: "gzip"}

// String is the coding's name as Content-Encoding and Accept-Encoding
// write it ("zstd", "br", "gzip", "identity").
func (e Encoding) String() string {
	if e >= numEncodings {
		return "unknown"
	}
	return encodingNames[e]
}

// ParseEncoding returns the Encoding named s ("zstd", "br", "gzip"), ok
// false for any other name (identity included: it is no compression).
func ParseEncoding(s string) (e Encoding, ok bool) {
	for e := Zstd; e < numEncodings; e++ {
		if encodingNames[e] == s {
			return e, true
		}
	}
	return Identity, false
}

// qUnset marks a coding Accept-Encoding does not name.
const qUnset = -1

// accepted is what an Accept-Encoding field says of the codings lb
// knows: the q-value of each in thousandths (0-1000), qUnset where the
// field does not name it, and the same for "*". It is a small value on
// the stack: parsing allocates nothing.
type accepted struct {
	q    [numEncodings]int16
	star int16
}

// parseAccept reads an Accept-Encoding value (RFC 9110 section 12.5.3):
// a comma-separated list of codings, each with an optional weight
// ";q=0.5". Coding names are case-insensitive, "x-gzip" is gzip (section
// 8.4.1.3), unknown codings and parameters other than q are ignored, an
// element with a malformed q-value is ignored as a whole, and of a
// coding named twice the first counts. It allocates nothing.
func parseAccept(v []byte) accepted {
	a := newAccepted()
	a.parse(v)
	return a
}

func newAccepted() accepted {
	a := accepted{star: qUnset}
	for i := range a.q {
		a.q[i] = qUnset
	}
	return a
}

// parse adds what one Accept-Encoding field value says to a.
func (a *accepted) parse(v []byte) {
	for len(v) > 0 {
		var elem []byte
		if i := indexByte(v, ','); i >= 0 {
			elem, v = v[:i], v[i+1:]
		} else {
			elem, v = v, nil
		}
		name, params := elem, []byte(nil)
		if i := indexByte(elem, ';'); i >= 0 {
			name, params = elem[:i], elem[i+1:]
		}
		name = trimOWS(name)
		if len(name) == 0 {
			continue
		}
		q, ok := weight(params)
		if !ok {
			continue
		}
		slot := &a.star
		switch {
		case len(name) == 1 && name[0] == '*':
		case equalFold(name, "identity"):
			slot = &a.q[Identity]
		case equalFold(name, "gzip"), equalFold(name, "x-gzip"):
			slot = &a.q[Gzip]
		case equalFold(name, "br"):
			slot = &a.q[Brotli]
		case equalFold(name, "zstd"):
			slot = &a.q[Zstd]
		default:
			continue
		}
		if *slot == qUnset {
			*slot = q
		}
	}
}

// weight reads the q parameter among an element's parameters
// ("q=0.8", "level=1;q=0"), in thousandths; 1000 without one. ok is
// false for a malformed q-value (RFC 9110 section 12.4.2: "0", "0.5",
// "1", "1.000", at most three decimals, no more than 1).
func weight(params []byte) (q int16, ok bool) {
	for len(params) > 0 {
		var p []byte
		if i := indexByte(params, ';'); i >= 0 {
			p, params = params[:i], params[i+1:]
		} else {
			p, params = params, nil
		}
		p = trimOWS(p)
		if len(p) < 2 || p[0]|0x20 != 'q' || p[1] != '=' {
			continue
		}
		return qvalue(p[2:])
	}
	return 1000, true
}

// qvalue parses a qvalue into thousandths.
func qvalue(s []byte) (int16, bool) {
	if len(s) == 0 || len(s) > 5 || (s[0] != '0' && s[0] != '1') {
		return 0, false
	}
	q := int16(s[0]-'0') * 1000
	if len(s) == 1 {
		return q, true
	}
	if s[1] != '.' {
		return 0, false
	}
	scale := int16(100)
	for _, c := range s[2:] {
		if c < '0' || c > '9' {
			return 0, false
		}
		q += int16(c-'0') * scale
		scale /= 10
	}
	if q > 1000 {
		return 0, false
	}
	return q, true
}

// Negotiate picks the coding to answer with from the request's
// Accept-Encoding value accept and the server's codings prefs, in its
// order of preference. Of the codings in prefs that the client accepts
// (q above 0, named or through "*"), those it weighs highest win, and
// among them the first in prefs. Identity wins instead when the client
// weighs it, named or through "*", above all of them; unnamed, it is
// acceptable but preferred to nothing. An empty or absent field, or one
// that refuses every coding in prefs, gets Identity (lb does not answer
// 406: an unencoded answer is one every client can read, whatever it
// says). It allocates nothing and is safe for concurrent use.
func Negotiate(accept []byte, prefs []Encoding) Encoding {
	if len(accept) == 0 {
		return Identity
	}
	return parseAccept(accept).choose(prefs)
}

// NegotiateFields is Negotiate for a request with several
// Accept-Encoding fields, which are one list (RFC 9110 section 5.3).
func NegotiateFields(fields [][]byte, prefs []Encoding) Encoding {
	a, seen := newAccepted(), false
	for _, f := range fields {
		if len(f) > 0 {
			a.parse(f)
			seen = true
		}
	}
	if !seen {
		return Identity
	}
	return a.choose(prefs)
}

// choose is Negotiate's choice once the field is read.
func (a accepted) choose(prefs []Encoding) Encoding {
	best, bestQ := Identity, int16(0)
	for _, e := range prefs {
		q := a.q[e]
		if q == qUnset {
			q = a.star
		}
		if q > bestQ {
			best, bestQ = e, q
		}
	}
	if best == Identity {
		return Identity
	}
	idQ := a.q[Identity]
	if idQ == qUnset {
		idQ = a.star
	}
	if idQ > bestQ {
		return Identity
	}
	return best
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// trimOWS trims optional whitespace (spaces and tabs, RFC 9110 section
// 5.6.3).
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold reports whether b is lower, ignoring ASCII case; lower is
// lower case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
