package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// StatusSet is a set of HTTP status codes written as single codes and
// ranges: "200-399", "200,204", "200-299,301". A nil set contains no
// code.
type StatusSet []StatusRange

// StatusRange is an inclusive range of status codes.
type StatusRange struct{ Lo, Hi int }

// Contains reports whether code is in the set.
func (s StatusSet) Contains(code int) bool {
	for _, r := range s {
		if code >= r.Lo && code <= r.Hi {
			return true
		}
	}
	return false
}

// String writes the set as it is configured: "200-399,404".
func (s StatusSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		if r.Lo == r.Hi {
			parts[i] = strconv.Itoa(r.Lo)
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r.Lo, r.Hi)
		}
	}
	return strings.Join(parts, ",")
}

// ParseStatusSet parses "200-399" and the like.
func ParseStatusSet(v string) (StatusSet, error) {
	var set StatusSet
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil || a < 100 || b > 599 || a > b {
			return nil, fmt.Errorf("%q is not a status code or range like \"200-399\" (codes 100-599)", v)
		}
		set = append(set, StatusRange{a, b})
	}
	return set, nil
}

// Redirect is a parsed redirect_https target. The zero value keeps the
// request's host and redirects to port 443.
type Redirect struct {
	// Host, when set, replaces the request's host; otherwise the request's
	// host is kept.
	Host string
	// Port is the HTTPS port, "" for 443.
	Port string
}

// ParseRedirect parses a redirect_https value: "https://:8443" (same host,
// port 8443), "https://" (same host, port 443) or "https://host:port".
func ParseRedirect(v string) (Redirect, error) {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "https" || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return Redirect{}, fmt.Errorf("%q is not like \"https://:8443\" or \"https://www.example.com\"", v)
	}
	var r Redirect
	host := u.Host
	if host != "" {
		if h, p, err := net.SplitHostPort(host); err == nil {
			r.Host, r.Port = h, p
		} else {
			r.Host = host
		}
	}
	if r.Port == "443" {
		r.Port = ""
	}
	if r.Port != "" {
		if n, err := strconv.Atoi(r.Port); err != nil || n < 1 || n > 65535 {
			return Redirect{}, fmt.Errorf("%q has a bad port", v)
		}
	}
	return r, nil
}
