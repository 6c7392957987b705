package config

import (
	"fmt"
	"io"
	"os"
)

// MaxPEMFile is the largest certificate, key or CA file lb reads. A chain
// is a few KB and the largest public CA bundles some 200 KB; a path that
// names a device, a pipe or a log file by mistake gets a clear error
// instead of reading without end.
const MaxPEMFile = 4 << 20

// ReadPEM reads a certificate, key or CA file: a regular file (or a link
// to one) of at most MaxPEMFile bytes. Errors name the path.
func ReadPEM(path string) ([]byte, error) {
	f, err := os.Open(path)
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
	b, err := io.ReadAll(io.LimitReader(f, MaxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", path, unwrapPathError(err))
	}
	if len(b) > MaxPEMFile {
		return nil, fmt.Errorf("%s is larger than %d MiB; it cannot be a certificate, key or CA bundle", path, MaxPEMFile>>20)
	}
	return b, nil
}
