package config

import (
	"strconv"
	"strings"
)

// keyLines maps indexed key paths, as errors name them
// ("pool[1].backend[0].address", "listener[0].tls"), to the 1-based line
// that defines them. Table headers are recorded under the table's path.
//
// The TOML parser reports lines only for syntax errors, so this small
// scanner reads the (already valid) source once more to find where each key
// lives. It understands comments, [tables], [[arrays of tables]], dotted and
// quoted keys, and values spanning lines (arrays, multi-line strings); keys
// inside inline tables are found through their enclosing key.
type keyLines map[string]int

// lookup returns the line of path, or of its nearest enclosing table or key
// that has one (so that a missing key points at its table header), or 0.
func (k keyLines) lookup(path string) int {
	for path != "" {
		if l, ok := k[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

// has reports whether path itself was written in the file.
func (k keyLines) has(path string) bool {
	_, ok := k[path]
	return ok
}

func indexKeys(src string) keyLines {
	idx := keyLines{}
	arrays := map[string]int{} // array-of-tables path -> index of its latest element
	table := ""                // indexed path of the current table
	var value multiline

	// resolve turns key parts into an indexed path below base, taking the
	// latest element of every array of tables it passes through.
	resolve := func(base string, parts []string) string {
		cur := base
		for _, p := range parts {
			if cur == "" {
				cur = p
			} else {
				cur += "." + p
			}
			if i, ok := arrays[cur]; ok {
				cur += "[" + strconv.Itoa(i) + "]"
			}
		}
		return cur
	}

	for n, line := range strings.Split(src, "\n") {
		lineNo := n + 1
		if value.open() {
			value.scan(line)
			continue
		}
		s := strings.TrimSpace(line)
		if s == "" || s[0] == '#' {
			continue
		}
		switch {
		case strings.HasPrefix(s, "[["):
			end := strings.Index(s, "]]")
			if end < 0 {
				continue
			}
			parts := splitKey(s[2:end])
			if len(parts) == 0 {
				continue
			}
			parent := resolve("", parts[:len(parts)-1])
			name := parts[len(parts)-1]
			if parent != "" {
				name = parent + "." + name
			}
			i, ok := arrays[name]
			if ok {
				i++
			}
			arrays[name] = i
			table = name + "[" + strconv.Itoa(i) + "]"
			if _, seen := idx[name]; !seen {
				idx[name] = lineNo
			}
			idx[table] = lineNo
		case s[0] == '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				continue
			}
			table = resolve("", splitKey(s[1:end]))
			idx[table] = lineNo
		default:
			eq := keyEnd(s)
			if eq < 0 {
				continue
			}
			path := resolve(table, splitKey(s[:eq]))
			if _, seen := idx[path]; !seen {
				idx[path] = lineNo
			}
			value.scan(s[eq+1:])
		}
	}
	return idx
}

// keyEnd returns the index of the '=' that ends the key in s, skipping
// quoted parts, or -1.
func keyEnd(s string) int {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '=':
			return i
		}
	}
	return -1
}

// splitKey splits a dotted TOML key into its parts, unquoting quoted ones.
func splitKey(k string) []string {
	var parts []string
	var b strings.Builder
	var quote byte
	flush := func() {
		if p := strings.TrimSpace(b.String()); p != "" {
			parts = append(parts, p)
		}
		b.Reset()
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case quote != 0:
			if c == '\\' && quote == '"' && i+1 < len(k) {
				i++
				b.WriteByte(k[i])
			} else if c == quote {
				quote = 0
			} else {
				b.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '.':
			flush()
		default:
			b.WriteByte(c)
		}
	}
	flush()
	return parts
}

// multiline follows a value across lines: open brackets of arrays and inline
// tables, and multi-line strings.
type multiline struct {
	depth int
	str   string // closing delimiter of an open multi-line string, or ""
}

func (m *multiline) open() bool { return m.depth > 0 || m.str != "" }

func (m *multiline) scan(s string) {
	for i := 0; i < len(s); i++ {
		if m.str != "" {
			if strings.HasPrefix(s[i:], m.str) {
				i += len(m.str) - 1
				m.str = ""
			} else if s[i] == '\\' && m.str == `"""` {
				i++
			}
			continue
		}
		switch c := s[i]; c {
		case '#':
			return
		case '[', '{':
			m.depth++
		case ']', '}':
			if m.depth > 0 {
				m.depth--
			}
		case '"', '\'':
			delim := string([]byte{c, c, c})
			if strings.HasPrefix(s[i:], delim) {
				m.str = delim
				i += 2
				continue
			}
			// A one-line string: skip to its end.
			for i++; i < len(s) && s[i] != c; i++ {
				if s[i] == '\\' && c == '"' {
					i++
				}
			}
		}
	}
}
