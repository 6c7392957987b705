package policy

import (
	"net/textproto"
	"slices"

	"github.com/valyala/fasthttp"
)

// HeaderRules set and remove fields of requests (before they go to a
// backend) and of responses (before they go to the client). Removals run
// before sets, so a rule may replace a field by removing and setting it.
// The zero value, and a nil *HeaderRules, change nothing.
type HeaderRules struct {
	reqSet, respSet []field
	reqDel, respDel [][]byte
}

type field struct{ name, value []byte }

// HeaderConfig is a [listener.headers] or [listener.route.headers] table.
type HeaderConfig struct {
	RequestSet     map[string]string
	RequestRemove  []string
	ResponseSet    map[string]string
	ResponseRemove []string
}

// NewHeaderRules compiles c, whose names and values edge.CheckRuleField
// and edge.CheckRuleValue have passed.
func NewHeaderRules(c HeaderConfig) *HeaderRules {
	r := &HeaderRules{}
	r.reqSet = fields(c.RequestSet)
	r.respSet = fields(c.ResponseSet)
	for _, n := range c.RequestRemove {
		r.reqDel = append(r.reqDel, []byte(textproto.CanonicalMIMEHeaderKey(n)))
	}
	for _, n := range c.ResponseRemove {
		r.respDel = append(r.respDel, []byte(textproto.CanonicalMIMEHeaderKey(n)))
	}
	return r
}

func fields(m map[string]string) []field {
	var out []field
	for _, n := range slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}) {
		out = append(out, field{[]byte(textproto.CanonicalMIMEHeaderKey(n)), []byte(m[n])})
	}
	return out
}

// Empty reports whether r changes nothing.
func (r *HeaderRules) Empty() bool {
	return r == nil || len(r.reqSet)+len(r.respSet)+len(r.reqDel)+len(r.respDel) == 0
}

// Request applies the request rules to h. It allocates nothing once h's
// buffers have grown.
func (r *HeaderRules) Request(h *fasthttp.RequestHeader) {
	if r == nil {
		return
	}
	for _, n := range r.reqDel {
		h.DelBytes(n)
	}
	for _, f := range r.reqSet {
		h.SetCanonical(f.name, f.value)
	}
}

// Response applies the response rules to h.
func (r *HeaderRules) Response(h *fasthttp.ResponseHeader) {
	if r == nil {
		return
	}
	for _, n := range r.respDel {
		h.DelBytes(n)
	}
	for _, f := range r.respSet {
		h.SetCanonical(f.name, f.value)
	}
}
