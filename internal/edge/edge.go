// Package edge is the syntax of the rules an operator writes for lb's
// edge: the address prefixes of allow and deny lists, and the header
// fields header rules may set or remove. pkg/config checks a config with
// it and pkg/policy builds the rules; it imports nothing of lb.
package edge

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParsePrefix parses one allow or deny entry: a CIDR prefix, or an
// address standing for itself alone. An IPv4-mapped IPv6 prefix is taken
// as the IPv4 one it maps.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an address or a CIDR prefix (10.0.0.0/8, 2001:db8::/32)", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix (10.0.0.0/8, 2001:db8::/32)", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has bits set past its length: did you mean %s?", s, p.Masked())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, nil
}

// CheckRuleField reports why a header rule may not set or remove the
// field name, on requests (request true) or responses, or nil if it may.
// Fields that frame the message or the connection are lb's to write, and
// so are the forwarding fields lb sets for backends (X-Forwarded-*,
// X-Real-IP, Forwarded, X-Client-*), which backends trust as lb's word.
func CheckRuleField(name string, request bool) error {
	if !IsToken(name) {
		return fmt.Errorf("%q is not a field name", name)
	}
	switch l := strings.ToLower(name); {
	case l == "content-length" || l == "transfer-encoding" || l == "connection" || l == "keep-alive" ||
		l == "upgrade" || l == "te" || l == "trailer" || l == "proxy-connection" || l == "content-encoding":
		return fmt.Errorf("%s frames the message or the connection; lb writes it", name)
	case request && l == "host":
		return fmt.Errorf("%s is the request's own; route by host instead", name)
	case request && (strings.HasPrefix(l, "x-forwarded-") || l == "x-real-ip" || l == "forwarded" || strings.HasPrefix(l, "x-client-")):
		return fmt.Errorf("%s is lb's to set for backends, which trust it as lb's word", name)
	}
	return nil
}

// CheckRuleValue reports why value may not be a field's: field values
// are visible characters, spaces and tabs (RFC 9110 section 5.5); a line
// break would end the field and start another.
func CheckRuleValue(value string) error {
	for i := range len(value) {
		if c := value[i]; c < ' ' && c != '\t' || c == 0x7f {
			if c == '\r' || c == '\n' {
				return fmt.Errorf("%q holds a line break", value)
			}
			return fmt.Errorf("%q holds the control character %#02x", value, c)
		}
	}
	return nil
}

// IsToken reports whether s is an RFC 9110 token (section 5.6.2), as
// field names, cookie names and media types are.
func IsToken(s string) bool {
	for i := range len(s) {
		if c := s[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return s != ""
}
