package policy

import (
	"bytes"
)

// StripPrefix returns target (a request target in origin form: path and
// query) without prefix at the start of its path, the query kept, in
// buf's storage when it fits. A path that becomes empty becomes "/", and
// the rest always starts with "/": prefix "/api" turns "/api/v1?x" into
// "/v1?x" and "/api" into "/". ok is false when target does not start
// with prefix.
func StripPrefix(buf []byte, target []byte, prefix string) (out []byte, ok bool) {
	if !bytes.HasPrefix(target, []byte(prefix)) {
		return nil, false
	}
	rest := target[len(prefix):]
	out = buf[:0]
	if len(rest) == 0 || rest[0] != '/' {
		out = append(out, '/')
	}
	return append(out, rest...), true
}

// Redirect appends to dst the Location of a route's redirect: origin (a
// scheme and authority, "https://www.example.com") and the request's
// target, path and query.
func Redirect(dst []byte, origin string, target []byte) []byte {
	dst = append(dst, origin...)
	if len(target) == 0 || target[0] != '/' {
		dst = append(dst, '/')
	}
	return append(dst, target...)
}
