// Package httpstatus holds what lb's HTTP/1.1 and HTTP/2 sides both need
// to know of status codes.
package httpstatus

// NoBody reports statuses whose responses never have a body, whatever
// their head says (RFC 9110 sections 6.4.1 and 15; RFC 9112 section 6.3):
// 1xx, 204 No Content and 304 Not Modified.
func NoBody(code int) bool {
	return code < 200 || code == 204 || code == 304
}
