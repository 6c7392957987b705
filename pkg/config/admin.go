package config

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

// MinAdminToken is the shortest admin token accepted, in bytes.
const MinAdminToken = 16

// maxAdminTokenFile bounds what is read from an admin_token file.
const maxAdminTokenFile = 4 << 10

// validateAdminAccess checks global.admin_hosts and global.admin_token,
// reads the token, and warns when the admin server can be reached from
// other machines with nothing but network access guarding it. No message
// here ever includes the token.
func (l *loader) validateAdminAccess() {
	g := &l.cfg.Global
	for i, h := range g.AdminHosts {
		key := fmt.Sprintf("global.admin_hosts[%d]", i)
		if err := checkAdminHost(h); err != nil {
			l.errorf(key, "%q %v", h, err)
		}
	}
	if g.AdminToken != "" {
		tok, err := l.readAdminToken(g.AdminToken)
		if err != nil {
			l.errorf("global.admin_token", "%v", err)
		} else {
			g.AdminTokenValue = Secret(tok)
		}
	}
	if g.Admin != "" && g.AdminToken == "" && !LoopbackOnly(g.Admin) {
		l.warnf("global.admin", "%s can be reached from other machines and global.admin_token is not set: anyone who can connect can drain backends, purge caches and reload; set admin_token or bind the admin server to 127.0.0.1", g.Admin)
	}
}

// checkAdminHost accepts a DNS name, optionally starting with "*." for
// every name under a domain. IP addresses need no entry: they are always
// accepted, since no one can rebind them.
func checkAdminHost(h string) error {
	name := strings.TrimPrefix(h, "*.")
	switch {
	case name == "":
		return fmt.Errorf("is not a host name")
	case strings.ContainsAny(name, ":/ "):
		return fmt.Errorf("is not a host name (write the name alone, without scheme or port)")
	case strings.Contains(name, "*"):
		return fmt.Errorf("is not a host name (a wildcard is only allowed as the first label, \"*.example.com\")")
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return fmt.Errorf("is not a host name (%q is not allowed)", c)
		}
	}
	return nil
}

// readAdminToken resolves "file:PATH" or "env:NAME". A token written in
// the config itself is refused: the config is copied into backups,
// version control and bug reports, and is often world-readable.
func (l *loader) readAdminToken(ref string) (string, error) {
	kind, arg, _ := strings.Cut(ref, ":")
	var tok string
	switch kind {
	case "file":
		if arg == "" {
			return "", fmt.Errorf("\"file:\" names no file")
		}
		path := l.resolvePath(arg)
		f, err := os.Open(path)
		if err != nil {
			return "", fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxAdminTokenFile+1))
		if err != nil {
			return "", fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
		}
		if len(b) > maxAdminTokenFile {
			return "", fmt.Errorf("%s is larger than %d bytes; it should hold the token alone", path, maxAdminTokenFile)
		}
		tok = strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("%s is empty", path)
		}
	case "env":
		if arg == "" {
			return "", fmt.Errorf("\"env:\" names no environment variable")
		}
		tok = strings.TrimSpace(os.Getenv(arg))
		if tok == "" {
			return "", fmt.Errorf("environment variable %s is not set or empty", arg)
		}
	default:
		return "", fmt.Errorf("must be \"file:PATH\" or \"env:NAME\" (the token itself does not belong in the config, which ends up in backups and version control)")
	}
	if len(tok) < MinAdminToken {
		return "", fmt.Errorf("the token in %s is %d bytes; use at least %d (for example: openssl rand -hex 32)", ref, len(tok), MinAdminToken)
	}
	for i := 0; i < len(tok); i++ {
		if !isTokenByte(tok[i]) {
			return "", fmt.Errorf("the token in %s has a character at byte %d that an Authorization: Bearer header cannot carry (use letters, digits and -._~+/=)", ref, i)
		}
	}
	return tok, nil
}

// isTokenByte reports the characters of RFC 6750's b64token.
func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+/=", c) >= 0
}

// LoopbackOnly reports whether an admin address (host:port) can be
// reached only from this machine: a loopback IP or "localhost". An empty
// host or 0.0.0.0 or [::] listens on every interface.
func LoopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return IsLocalhostName(host)
}

// IsLocalhostName reports "localhost" and the names under it, which
// resolve to loopback by RFC 6761 and which browsers do not look up.
func IsLocalhostName(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}
