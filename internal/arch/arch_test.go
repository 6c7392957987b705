// Package arch holds the test that keeps lb's package graph as
// docs/architecture.md draws it.
package arch

import (
	"bufio"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/offloadlb/lb/"

// TestImportsAsDocumented reads the table "Who may import whom" in
// docs/architecture.md and checks every package of the module against
// it: each package is in the table, imports (in its non-test files) no
// package of the module the table does not allow, and the table names no
// package that does not exist. Changing the graph means changing the
// page, so the page cannot fall behind the code.
func TestImportsAsDocumented(t *testing.T) {
	root := filepath.Join("..", "..")
	allowed := readTable(t, filepath.Join(root, "docs", "architecture.md"))
	actual := moduleImports(t, root)
	for pkg, imports := range actual {
		may, ok := allowed[pkg]
		if !ok {
			t.Errorf("%s is not in docs/architecture.md's import table", pkg)
			continue
		}
		for _, imp := range imports {
			if !slices.Contains(may, imp) {
				t.Errorf("%s imports %s, which docs/architecture.md does not allow it", pkg, imp)
			}
		}
	}
	for pkg := range allowed {
		if _, ok := actual[pkg]; !ok {
			t.Errorf("docs/architecture.md names %s, which has no non-test Go files", pkg)
		}
	}
}

// readTable reads the rows "| `pkg/x` | `pkg/y`, `internal/z` |" that
// follow the heading "## Who may import whom", up to the next heading.
func readTable(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	table := map[string][]string{}
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			in = strings.EqualFold(strings.TrimLeft(line, "# "), "Who may import whom")
			continue
		}
		if !in || !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) < 2 {
			continue
		}
		pkg := strings.Trim(strings.TrimSpace(cells[0]), "`")
		var may []string
		for _, c := range strings.Split(cells[1], ",") {
			if c = strings.Trim(strings.TrimSpace(c), "`"); c != "" && c != "nothing" && c != "—" {
				may = append(may, c)
			}
		}
		if _, dup := table[pkg]; dup {
			t.Errorf("docs/architecture.md lists %s twice", pkg)
		}
		table[pkg] = may
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(table) == 0 {
		t.Fatal(`docs/architecture.md has no rows under "## Who may import whom"`)
	}
	return table
}

// moduleImports maps each package of the module (by its path inside the
// module) to the module's packages its non-test files import.
func moduleImports(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "node_modules" || n == "third_party") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(rel)
		list := out[pkg]
		if list == nil {
			list = []string{}
		}
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if rest, ok := strings.CutPrefix(p, module); ok && !slices.Contains(list, rest) {
				list = append(list, rest)
			}
		}
		sort.Strings(list)
		out[pkg] = list
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
