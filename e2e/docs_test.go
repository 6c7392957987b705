package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"

	"github.com/offloadlb/lb/pkg/config"
)

// The configuration reference (docs/configuration.md) documents each key
// as a row of a table under a heading that names the TOML table:
//
//	### `[listener.tls]`
//	| key | type | default | meaning |
//	| `cert` | string | required | ... |
//
// The tests below keep it, examples/reference.toml and what lb accepts in
// step.

const (
	referenceTOML = "../examples/reference.toml"
	configDoc     = "../docs/configuration.md"
)

var (
	docTableHeading = regexp.MustCompile("^#{2,6} `\\[\\[?([a-z_.]+)\\]\\]?`\\s*$")
	docKeyRow       = regexp.MustCompile("^\\| `([a-z_]+)` \\|([^|]*)\\|([^|]*)\\|")
	firstCodeSpan   = regexp.MustCompile("`([^`]+)`")
	commentedKey    = regexp.MustCompile(`^\s*#\s*([a-z_]+)\s*=\s*\S`)
	tomlTableHeader = regexp.MustCompile(`^\s*\[\[?\s*([a-z_.]+)\s*\]\]?`)
)

// docKey is one key documented in the configuration reference.
type docKey struct {
	path string // dotted, without indexes: "listener.tls.cert"
	def  string // the default column's first code span, "" if none
	line int
}

// documentedKeys reads the configuration reference's key tables, in page
// order.
func documentedKeys(t *testing.T) []docKey {
	t.Helper()
	src, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	var keys []docKey
	table := ""
	for i, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "#") {
			table = ""
			if m := docTableHeading.FindStringSubmatch(line); m != nil {
				table = m[1]
			}
			continue
		}
		m := docKeyRow.FindStringSubmatch(line)
		if table == "" || m == nil {
			continue
		}
		k := docKey{path: table + "." + m[1], line: i + 1}
		if d := firstCodeSpan.FindStringSubmatch(m[3]); d != nil {
			k.def = d[1]
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		t.Fatalf("%s documents no keys: want tables under headings like ### `[global]`", configDoc)
	}
	return keys
}

// referenceKeys returns the dotted paths of every key examples/reference.toml
// sets, and of those it shows commented out ("# client_ca = ...") under
// their table.
func referenceKeys(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile(referenceTOML)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if _, err := toml.Decode(string(src), &doc); err != nil {
		t.Fatalf("%s: %v", referenceTOML, err)
	}
	keys := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				walk(joinKey(prefix, k), e)
			}
		case []map[string]any:
			for _, e := range x {
				walk(prefix, e)
			}
		default:
			keys[prefix] = true
		}
	}
	walk("", doc)
	table := ""
	for _, line := range strings.Split(string(src), "\n") {
		if m := tomlTableHeader.FindStringSubmatch(line); m != nil {
			table = m[1]
		} else if m := commentedKey.FindStringSubmatch(line); m != nil {
			keys[joinKey(table, m[1])] = true
		}
	}
	return keys
}

func joinKey(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

// TestReferenceKeysDocumented: every key examples/reference.toml shows has
// a row in the configuration reference, and none has two.
func TestReferenceKeysDocumented(t *testing.T) {
	documented := map[string]int{}
	for _, k := range documentedKeys(t) {
		if line, dup := documented[k.path]; dup {
			t.Errorf("%s:%d: %s is documented twice (also line %d)", configDoc, k.line, k.path, line)
		}
		documented[k.path] = k.line
	}
	ref := referenceKeys(t)
	var missing []string
	for k := range ref {
		if _, ok := documented[k]; !ok {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	for _, k := range missing {
		t.Errorf("%s has %s, which %s does not document (add a row to its table)", referenceTOML, k, configDoc)
	}
}

// TestReferenceCoversConfig: every key lb's config loader decodes is in
// examples/reference.toml, which says it shows them all.
func TestReferenceCoversConfig(t *testing.T) {
	ref := referenceKeys(t)
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			path := joinKey(prefix, name)
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			// A table: a struct that does not decode itself.
			if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(reflect.TypeFor[toml.Unmarshaler]()) {
				walk(path, ft)
				continue
			}
			if !ref[path] {
				t.Errorf("lb reads %s, which %s does not show", path, referenceTOML)
			}
		}
	}
	walk("", reflect.TypeFor[config.Config]())
}

// TestDocsKeysAccepted: a config that sets every key the configuration
// reference documents passes lb -check. It is examples/reference.toml
// with each documented key it lacks added to the first table of its kind,
// at the default the reference page gives; so a key documented under a
// name or table lb does not know fails as an unknown key.
func TestDocsKeysAccepted(t *testing.T) {
	src, err := os.ReadFile(referenceTOML)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if _, err := toml.Decode(string(src), &doc); err != nil {
		t.Fatalf("%s: %v", referenceTOML, err)
	}
	keys := documentedKeys(t)
	var added []string
	for _, k := range keys {
		parts := strings.Split(k.path, ".")
		table, ok := firstTable(doc, parts[:len(parts)-1])
		if !ok {
			t.Errorf("%s:%d: %s: there is no table %s to put it in", configDoc, k.line, k.path, strings.Join(parts[:len(parts)-1], "."))
			continue
		}
		name := parts[len(parts)-1]
		if _, set := table[name]; set {
			continue
		}
		if k.def == "" {
			t.Errorf("%s:%d: %s is not in %s and its default column has no value to try (write the default as TOML in backquotes)", configDoc, k.line, k.path, referenceTOML)
			continue
		}
		var v map[string]any
		if _, err := toml.Decode("v = "+k.def, &v); err != nil {
			t.Errorf("%s:%d: %s: default `%s` is not a TOML value: %v", configDoc, k.line, k.path, k.def, err)
			continue
		}
		table[name] = v["v"]
		added = append(added, k.path+" = "+k.def)
	}
	if t.Failed() {
		return
	}

	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(doc); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeCerts(t, dir)
	path := filepath.Join(dir, "documented.toml")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCmd(t, 30*time.Second, lbBin, "-check", "-config", path)
	if err != nil || !strings.Contains(out, ": ok (") {
		t.Fatalf("lb -check refuses a config with every key %s documents (%v); added to %s: %v\n%s\nconfig:\n%s",
			configDoc, err, referenceTOML, added, out, buf.String())
	}
	t.Logf("%d documented keys accepted; added to the reference: %v", len(keys), added)
}

// firstTable finds the table at path in a decoded TOML document, taking
// the first element of arrays of tables and creating plain tables that
// are missing.
func firstTable(doc map[string]any, path []string) (map[string]any, bool) {
	cur := doc
	for _, p := range path {
		switch x := cur[p].(type) {
		case map[string]any:
			cur = x
		case []map[string]any:
			if len(x) == 0 {
				return nil, false
			}
			cur = x[0]
		case nil:
			m := map[string]any{}
			cur[p] = m
			cur = m
		default:
			return nil, false
		}
	}
	return cur, true
}

// markdownFiles are the pages whose links TestDocsLinks checks.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	return append([]string{"../README.md"}, files...)
}

var (
	mdLink     = regexp.MustCompile(`!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	mdRefLink  = regexp.MustCompile(`^\s*\[[^\]]+\]:\s*(\S+)`)
	codeSpan   = regexp.MustCompile("`+[^`]*`+")
	htmlAnchor = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
)

// TestDocsLinks: every relative link in README.md and docs/*.md names a
// file or folder of the repository, and a #fragment names a heading of the
// Markdown page it points to.
func TestDocsLinks(t *testing.T) {
	anchors := map[string]map[string]bool{} // cleaned path -> anchors
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		a := markdownAnchors(string(src))
		anchors[path] = a
		return a
	}
	checked := 0
	for _, file := range markdownFiles(t) {
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range markdownProse(string(src)) {
			var targets []string
			for _, m := range mdLink.FindAllStringSubmatch(codeSpan.ReplaceAllString(line, "x"), -1) {
				targets = append(targets, m[1])
			}
			if m := mdRefLink.FindStringSubmatch(line); m != nil {
				targets = append(targets, m[1])
			}
			for _, target := range targets {
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				checked++
				where := fmt.Sprintf("%s:%d: link %q", strings.TrimPrefix(file, "../"), i+1, target)
				p, frag, _ := strings.Cut(target, "#")
				dest := file
				if p != "" {
					if strings.HasPrefix(p, "/") {
						t.Errorf("%s: absolute path; make it relative to the page", where)
						continue
					}
					dest = filepath.Join(filepath.Dir(file), p)
					rel, err := filepath.Rel("..", dest)
					if err != nil || strings.HasPrefix(rel, "..") {
						t.Errorf("%s: points outside the repository", where)
						continue
					}
					if _, err := os.Stat(dest); err != nil {
						t.Errorf("%s: %s does not exist", where, rel)
						continue
					}
				}
				if frag == "" || !strings.HasSuffix(dest, ".md") {
					continue
				}
				if !anchorsOf(filepath.Clean(dest))[frag] {
					t.Errorf("%s: no heading in %s has the anchor #%s", where, strings.TrimPrefix(dest, "../"), frag)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("found no relative links at all; is the link pattern broken?")
	}
}

// markdownProse returns the page's lines with those inside fenced code
// blocks blanked, so that line numbers stay right.
func markdownProse(src string) []string {
	lines := strings.Split(src, "\n")
	fence := ""
	for i, l := range lines {
		s := strings.TrimSpace(l)
		switch {
		case fence != "":
			if strings.HasPrefix(s, fence) {
				fence = ""
			}
			lines[i] = ""
		case strings.HasPrefix(s, "```") || strings.HasPrefix(s, "~~~"):
			fence = s[:3]
			lines[i] = ""
		}
	}
	return lines
}

// markdownAnchors returns the anchors GitHub gives a page's headings
// (lower case, punctuation dropped, spaces as hyphens, "-1", "-2" for
// repeats), and any <a name> or <a id>.
func markdownAnchors(src string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	for _, line := range markdownProse(src) {
		for _, m := range htmlAnchor.FindAllStringSubmatch(line, -1) {
			anchors[m[1]] = true
		}
		if !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimLeft(line, "#")
		if text == "" || text[0] != ' ' {
			continue
		}
		slug := headingSlug(strings.TrimSpace(text))
		if n := seen[slug]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	}
	return anchors
}

func headingSlug(text string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// TestDocsHeadingSlugs pins headingSlug to GitHub's anchors for the kinds
// of heading the docs use.
func TestDocsHeadingSlugs(t *testing.T) {
	for text, want := range map[string]string{
		"Changing the config while it runs": "changing-the-config-while-it-runs",
		"`[listener.tls]`":                  "listenertls",
		"`[[pool.backend]]`":                "poolbackend",
		"HTTP/2":                            "http2",
		"HTTPS redirect and HSTS":           "https-redirect-and-hsts",
		"What testssl.sh says":              "what-testsslsh-says",
		"Limits, memory and the 503":        "limits-memory-and-the-503",
	} {
		if got := headingSlug(text); got != want {
			t.Errorf("headingSlug(%q) = %q, want %q", text, got, want)
		}
	}
	a := markdownAnchors("# A\n\n```\n# not a heading\n```\n## A\n### B b\n")
	if !slices.Equal(sortedKeys(a), []string{"a", "a-1", "b-b"}) {
		t.Errorf("markdownAnchors: %v", sortedKeys(a))
	}
}

func sortedKeys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
