package config

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"golang.org/x/crypto/bcrypt"
)

// MaxPEMFile is the largest certificate, key or CA file lb reads. A chain
// is a few KB and the largest public CA bundles some 200 KB; a path that
// names a device, a pipe or a log file by mistake gets a clear error
// instead of reading without end.
const MaxPEMFile = 4 << 20

// ReadPEM reads a certificate, key or CA file: a regular file (or a link
// to one) of at most MaxPEMFile bytes. Errors name the path.
func ReadPEM(path string) ([]byte, error) {
	return readSmallFile(path, MaxPEMFile, "a certificate, key or CA bundle")
}

// MaxPageFile is the largest error page lb loads.
const MaxPageFile = 1 << 20

// readSmallFile reads a regular file (or a link to one) of at most max
// bytes; what says what it should be, for the error when it is larger.
// Errors name the path.
func readSmallFile(path string, max int64, what string) ([]byte, error) {
	// Non-blocking, so that opening a named pipe returns at once (to be
	// refused below) instead of waiting for a writer.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %s; it cannot be %s", path, sizeName(max), what)
	}
	return b, nil
}

// sizeName writes a power-of-two size in MiB or KiB.
func sizeName(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// MaxTicketKeys is the most keys a ticket_keys file may hold.
const MaxTicketKeys = 64

// ReadTicketKeys reads a ticket_keys file: one session ticket key per
// line, 32 random bytes in base64 (`openssl rand -base64 32`), the first
// sealing new tickets and every one opening them. Blank lines and lines
// starting with # are skipped. Errors name the file and line.
func ReadTicketKeys(path string) ([][32]byte, error) {
	b, err := ReadPEM(path)
	if err != nil {
		return nil, err
	}
	var keys [][32]byte
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("%s line %d: not a key (32 random bytes in base64, as `openssl rand -base64 32` prints)", path, n+1)
		}
		if len(keys) == MaxTicketKeys {
			return nil, fmt.Errorf("%s holds more than %d keys", path, MaxTicketKeys)
		}
		keys = append(keys, [32]byte(raw))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no key (one per line: 32 random bytes in base64)", path)
	}
	return keys, nil
}

// MaxHtpasswd is the largest htpasswd file lb reads.
const MaxHtpasswd = 4 << 20

// ReadHtpasswd reads an htpasswd file of bcrypt hashes (`htpasswd -B`):
// one "user:hash" per line, blank lines and lines starting with # skipped.
// Errors name the file and line; other hash schemes (MD5 "$apr1$", SHA-1
// "{SHA}", crypt) are refused, bcrypt being the one that resists
// guessing.
func ReadHtpasswd(path string) (map[string][]byte, error) {
	b, err := readSmallFile(path, MaxHtpasswd, "an htpasswd file")
	if err != nil {
		return nil, err
	}
	users := map[string][]byte{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		switch {
		case !ok || user == "":
			return nil, fmt.Errorf("%s line %d: not \"user:hash\"", path, n+1)
		case !strings.HasPrefix(hash, "$2y$") && !strings.HasPrefix(hash, "$2a$") && !strings.HasPrefix(hash, "$2b$"):
			return nil, fmt.Errorf("%s line %d: user %s: not a bcrypt hash; make it with `htpasswd -B` (MD5, SHA-1 and crypt hashes are refused)", path, n+1, user)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("%s line %d: user %s: %v", path, n+1, user, err)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("%s line %d: user %s is there twice", path, n+1, user)
		}
		users[user] = []byte(hash)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s holds no user (one \"user:hash\" per line, from `htpasswd -B`)", path)
	}
	return users, nil
}
