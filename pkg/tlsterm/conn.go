package tlsterm

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"time"
)

// Conn is a client connection whose handshake is done, with what the
// proxy needs to know of it worked out once rather than per request. It
// is what an http listener's server sees; fasthttp still finds the TLS
// state through the embedded *tls.Conn. Its fields are set before the
// connection is handed on and only read after.
type Conn struct {
	*tls.Conn
	// Version is the TLS version (tls.VersionTLS13...).
	Version uint16
	// Proto is the negotiated ALPN protocol ("h2", "http/1.1" or "").
	Proto string
	// ClientVerify is "" without client authentication, else the value
	// of X-Client-Verify: "SUCCESS", "NONE" or "FAILED:reason".
	ClientVerify string
	// ClientSubject is the client certificate's subject (RFC 4514),
	// when one was sent.
	ClientSubject string
}

// HTTP2 reports whether the client negotiated HTTP/2 (ALPN "h2"): its
// connection is served by an HTTP/2 server, and its requests are HTTP/2
// ones. False for a nil *Conn. It reads only what the handshake set, and
// so is safe to call from any goroutine.
func (c *Conn) HTTP2() bool { return c != nil && c.Proto == "h2" }

// ConnOf returns the *Conn that nc is or wraps, or nil for a connection
// whose TLS lb did not terminate (nil for a nil nc too). Wrappers are
// looked through by their RawConn method, as pkg/tunnel's splice does.
func ConnOf(nc net.Conn) *Conn {
	for {
		switch x := nc.(type) {
		case *Conn:
			return x
		case interface{ RawConn() net.Conn }:
			nc = x.RawConn()
		default:
			return nil
		}
	}
}

// Client authentication modes, from client_auth.
const (
	ClientAuthNone    = "none"
	ClientAuthRequest = "request"
	ClientAuthRequire = "require"
)

// verifyClient works out X-Client-Verify and X-Client-Cert-Subject for a
// finished handshake. With "require" the handshake itself verified the
// chain; with "request" a certificate was asked for but not checked, so
// it is checked here, and a bad one is reported rather than refused.
func verifyClient(mode string, roots *x509.CertPool, st *tls.ConnectionState, now time.Time) (verify, subject string) {
	if mode == ClientAuthNone || mode == "" {
		return "", ""
	}
	if len(st.PeerCertificates) == 0 {
		return "NONE", ""
	}
	leaf := st.PeerCertificates[0]
	subject = headerSafe(leaf.Subject.String())
	if mode == ClientAuthRequire && len(st.VerifiedChains) > 0 {
		return "SUCCESS", subject
	}
	inter := x509.NewCertPool()
	for _, c := range st.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return "FAILED:" + verifyReason(err), subject
	}
	return "SUCCESS", subject
}

// verifyReason says in a few words why a chain did not verify.
func verifyReason(err error) string {
	var inv x509.CertificateInvalidError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	switch {
	case errors.As(err, &inv):
		switch inv.Reason {
		case x509.Expired:
			return "certificate expired or not yet valid"
		case x509.IncompatibleUsage:
			return "certificate not for client authentication"
		case x509.NotAuthorizedToSign:
			return "issuer not allowed to sign certificates"
		case x509.CANotAuthorizedForThisName, x509.NameConstraintsWithoutSANs, x509.NameMismatch:
			return "name constraints"
		case x509.TooManyIntermediates:
			return "chain too long"
		}
	case errors.As(err, &ua):
		return "unknown issuer"
	case errors.As(err, &hn):
		return "name mismatch"
	}
	return headerSafe(err.Error())
}

// headerSafe makes s fit in a header value: control characters and
// non-ASCII bytes are written as RFC 4514 hex escapes ("\c3\a9").
func headerSafe(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789abcdef"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			b.WriteByte('\\')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
