// Package policy holds the per-listener and per-route rules an edge
// applies before and after a request meets a backend: who may connect
// (allow and deny lists), what the request and response heads get or
// lose (header rules), and how a route's path is rewritten or redirected.
// Nothing here knows the server: pkg/server applies the listener's access
// list at accept, and pkg/proxy the rest per request.
package policy

import (
	"net"
	"net/netip"

	"github.com/offloadlb/lb/internal/edge"
)

// Filter is an allow and a deny list of client addresses. A zero Filter,
// or a nil *Filter, lets everyone in.
type Filter struct {
	allow, deny []netip.Prefix
}

// NewFilter parses allow and deny lists of CIDR prefixes or single
// addresses ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7").
func NewFilter(allow, deny []string) (*Filter, error) {
	f := &Filter{}
	var err error
	if f.allow, err = parsePrefixes(allow); err != nil {
		return nil, err
	}
	if f.deny, err = parsePrefixes(deny); err != nil {
		return nil, err
	}
	return f, nil
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := edge.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Empty reports whether f lets everyone in.
func (f *Filter) Empty() bool { return f == nil || len(f.allow) == 0 && len(f.deny) == 0 }

// Allows reports whether a client at a may come in: not in the deny list,
// and in the allow list if there is one. An address that is not valid
// (a client whose address is not an IP, as over a Unix socket) comes in
// only when there is no allow list.
func (f *Filter) Allows(a netip.Addr) bool {
	if f == nil {
		return true
	}
	a = a.Unmap()
	for _, p := range f.deny {
		if p.Contains(a) {
			return false
		}
	}
	if len(f.allow) == 0 {
		return true
	}
	for _, p := range f.allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// AllowsAddr is Allows for a connection's address.
func (f *Filter) AllowsAddr(a net.Addr) bool {
	if f.Empty() {
		return true
	}
	return f.Allows(AddrOf(a))
}

// AddrOf is the IP of a connection's address, the zero Addr if it has
// none.
func AddrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
