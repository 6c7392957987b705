package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Error is one problem found in a config: where it is and what is wrong.
type Error struct {
	File string // config file, "" when parsed from memory
	Line int    // 1-based line, 0 when unknown
	Key  string // key path such as "pool[1].backend[0].address"
	Msg  string
}

// Error is "file:line: key: message", leaving out what is unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteByte(':')
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one config, in file order.
type Errors []*Error

// Error is every problem's Error, one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads, decodes, defaults and validates the config file at path. The
// error, if any, is an Errors listing every problem found.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: fmt.Sprintf("cannot read config: %v", unwrapPathError(err))}}
	}
	return Parse(src, path)
}

// Parse decodes, defaults and validates a config held in memory. file names
// it in errors and anchors relative certificate paths; it may be "".
func Parse(src []byte, file string) (*Config, error) {
	return ParseWith(src, file, ParseOptions{})
}

// ParseOptions adjust ParseWith. The zero value reads every file the
// config names from disk.
type ParseOptions struct {
	// Files holds the contents of files the config names, by the path
	// written in the config; a listener's cert and key found here are
	// used from memory (see TLS.CertPEM) instead of read from disk.
	Files map[string][]byte
}

// ParseWith is Parse with options.
func ParseWith(src []byte, file string, opts ParseOptions) (*Config, error) {
	cfg := &Config{File: file}
	text := strings.TrimPrefix(string(src), "\ufeff")
	lines := indexKeys(text)
	md, err := toml.Decode(text, cfg)
	if err != nil {
		return nil, Errors{decodeError(file, lines, err)}
	}
	l := &loader{cfg: cfg, lines: lines}
	l.unknownKeys(md.Undecoded())
	for i := range cfg.Listeners {
		if t := cfg.Listeners[i].TLS; t != nil && opts.Files[t.Cert] != nil {
			t.CertPEM, t.KeyPEM = opts.Files[t.Cert], opts.Files[t.Key]
		}
	}
	l.applyDefaults()
	l.validate()
	if len(l.errs) > 0 {
		sort.SliceStable(l.errs, func(i, j int) bool { return l.errs[i].Line < l.errs[j].Line })
		return nil, l.errs
	}
	cfg.Warnings = l.warnings
	return cfg, nil
}

// typeErr matches the decoder's type mismatch errors, which carry a line
// and an un-indexed key only in their text.
var typeErr = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "([^"]*)"\): (.*)$`)

var typeMsg = regexp.MustCompile(`^incompatible types: TOML value has type (\w+); destination has type (\w+)$`)

func decodeError(file string, lines keyLines, err error) *Error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return &Error{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	}
	m := typeErr.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
	}
	e := &Error{File: file, Key: m[2], Msg: m[3]}
	e.Line, _ = strconv.Atoi(m[1])
	// Name the indexed key defined on that line.
	for p, n := range lines {
		if n == e.Line && stripIndexes(p) == m[2] {
			e.Key = p
		}
	}
	if t := typeMsg.FindStringSubmatch(e.Msg); t != nil {
		e.Msg = fmt.Sprintf("must be %s, not %s", article(typeName(t[2])), article(typeName(t[1])))
	}
	return e
}

func typeName(t string) string {
	switch t {
	case "int64", "integer":
		return "integer"
	case "float64", "float":
		return "number with a fraction"
	case "bool":
		return "boolean"
	}
	return t
}

func article(s string) string {
	if strings.IndexByte("aeiou", s[0]) >= 0 {
		return "an " + s
	}
	return "a " + s
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// loader carries one Parse call's state.
type loader struct {
	cfg      *Config
	lines    keyLines
	errs     Errors
	warnings []string
	// suggested holds keys that an unknown key was taken for a typo of,
	// so that the missing key is not reported a second time.
	suggested map[string]bool
}

func (l *loader) errorf(key, format string, args ...any) {
	l.errs = append(l.errs, &Error{File: l.cfg.File, Line: l.lines.lookup(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// missing reports a required key that is absent, unless a misspelt key
// already accounts for it.
func (l *loader) missing(key, why string) {
	if !l.suggested[key] {
		l.errorf(key, "missing %s", why)
	}
}

func (l *loader) warnf(key, format string, args ...any) {
	loc := key
	if line := l.lines.lookup(key); line > 0 {
		loc = fmt.Sprintf("line %d: %s", line, key)
	}
	l.warnings = append(l.warnings, loc+": "+fmt.Sprintf(format, args...))
}

// defined reports whether the operator wrote the key at path.
func (l *loader) defined(path string) bool { return l.lines.has(path) }

// unknownKeys reports keys that match no field, with the closest known key
// as a suggestion.
func (l *loader) unknownKeys(keys []toml.Key) {
	stripped := map[string][]string{} // "pool.backend.adress" -> indexed paths
	for p := range l.lines {
		s := stripIndexes(p)
		stripped[s] = append(stripped[s], p)
	}
	for _, k := range keys {
		dotted := k.String()
		hint := ""
		near := closestKey(reflect.TypeFor[Config](), []string(k))
		if near != "" {
			hint = fmt.Sprintf(" (did you mean %q?)", near)
		}
		paths := stripped[dotted]
		if len(paths) == 0 {
			paths = []string{dotted}
		}
		sort.Strings(paths)
		for _, p := range paths {
			l.errorf(p, "unknown key%s", hint)
			if hint != "" {
				if l.suggested == nil {
					l.suggested = map[string]bool{}
				}
				l.suggested[p[:strings.LastIndexByte(p, '.')+1]+near] = true
			}
		}
	}
}

func stripIndexes(p string) string {
	var b strings.Builder
	skip := false
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '[':
			skip = true
		case c == ']':
			skip = false
		case !skip:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// closestKey finds the field name nearest to the last part of key among the
// fields of the table that key is in, or "".
func closestKey(t reflect.Type, key []string) string {
	for _, part := range key[:len(key)-1] {
		t = derefType(t)
		if t.Kind() != reflect.Struct {
			return ""
		}
		f, ok := fieldByTag(t, part)
		if !ok {
			return ""
		}
		t = f.Type
	}
	t = derefType(t)
	if t.Kind() != reflect.Struct {
		return ""
	}
	want := key[len(key)-1]
	best, bestD := "", 3 // suggest only near misses
	for i := 0; i < t.NumField(); i++ {
		name := strings.Split(t.Field(i).Tag.Get("toml"), ",")[0]
		if name == "" || name == "-" {
			continue
		}
		if d := editDistance(strings.ToLower(want), name); d < bestD {
			best, bestD = name, d
		}
	}
	return best
}

func derefType(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	return t
}

func fieldByTag(t reflect.Type, tag string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if strings.Split(t.Field(i).Tag.Get("toml"), ",")[0] == tag {
			return t.Field(i), true
		}
	}
	return reflect.StructField{}, false
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// resolvePath makes a certificate path relative to the config file's folder.
func (l *loader) resolvePath(p string) string {
	if p == "" || filepath.IsAbs(p) || l.cfg.File == "" {
		return p
	}
	return filepath.Join(filepath.Dir(l.cfg.File), p)
}
