package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a TOML duration written as a Go duration string ("2s",
// "1m30s"). Decoding never fails: a value that does not parse is kept with
// its error so that validation can report every bad value in one pass,
// each with its key path and line.
type Duration struct {
	time.Duration
	err error
}

// UnmarshalTOML implements toml.Unmarshaler.
func (d *Duration) UnmarshalTOML(v any) error {
	d.Duration, d.err = 0, nil
	switch x := v.(type) {
	case string:
		p, err := time.ParseDuration(strings.TrimSpace(x))
		if err != nil {
			d.err = fmt.Errorf("%q is not a duration (write it like \"2s\", \"500ms\" or \"1m30s\")", x)
			return nil
		}
		d.Duration = p
	case int64:
		if x == 0 {
			return nil
		}
		d.err = fmt.Errorf("%d has no unit (write it as a string like \"%ds\")", x, x)
	default:
		d.err = fmt.Errorf("%v is not a duration (write it like \"2s\")", v)
	}
	return nil
}

// MarshalText writes the duration in Go syntax.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.Duration.String()), nil }

// Size is a byte count, written as an integer or as a string with a unit:
// "512B", "16KB"/"16KiB", "10MB"/"10MiB", "1GB"/"1GiB". KB, MB and GB are
// powers of 1000; KiB, MiB and GiB powers of 1024. Like Duration, a bad
// value is kept with its error for validation.
type Size struct {
	Bytes int64
	err   error
}

// UnmarshalTOML implements toml.Unmarshaler.
func (s *Size) UnmarshalTOML(v any) error {
	s.Bytes, s.err = 0, nil
	switch x := v.(type) {
	case int64:
		s.Bytes = x
	case string:
		n, err := ParseSize(x)
		if err != nil {
			s.err = err
			return nil
		}
		s.Bytes = n
	default:
		s.err = fmt.Errorf("%v is not a size (write bytes as an integer, or a string like \"16KiB\")", v)
	}
	return nil
}

// MarshalText writes the size as a plain byte count.
func (s Size) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(s.Bytes, 10)), nil }

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so that "KiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"kb", 1000}, {"mb", 1000 * 1000}, {"gb", 1000 * 1000 * 1000},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30},
	{"b", 1},
}

// ParseSize parses "1234", "16KiB", "10MB" and the like into bytes.
func ParseSize(str string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(str))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s = strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			mult = u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (write bytes as an integer, or a string like \"16KiB\" or \"10MB\")", str)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is too large", str)
	}
	return n * mult, nil
}
