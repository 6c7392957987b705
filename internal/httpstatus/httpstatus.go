// Package httpstatus holds what lb's HTTP/1.1 and HTTP/2 sides, and the
// layers between them and the backends, need to know of status codes.
package httpstatus

import (
	"errors"
	"strconv"

	"github.com/valyala/fasthttp"
)

// ErrHeadTooLarge is what a front end gives its handler's ServeError for a
// request whose head is larger than it takes (431 is meant): pkg/h2 for
// an HTTP/2 header block too big to be read as an HTTP/1.1 head.
var ErrHeadTooLarge = errors.New("request head too large")

// NoBody reports statuses whose responses never have a body, whatever
// their head says (RFC 9110 sections 6.4.1 and 15; RFC 9112 section 6.3):
// 1xx, 204 No Content and 304 Not Modified.
func NoBody(code int) bool {
	return code < 200 || code == 204 || code == 304
}

// Answer replaces whatever resp holds with the short plain-text response
// lb makes itself for code ("503 Service Unavailable"). resp belongs to
// the caller's goroutine.
func Answer(resp *fasthttp.Response, code int) {
	resp.Reset()
	resp.SetStatusCode(code)
	resp.Header.SetContentType("text/plain; charset=utf-8")
	resp.SetBodyString(strconv.Itoa(code) + " " + fasthttp.StatusMessage(code) + "\n")
}
