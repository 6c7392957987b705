package config

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// withCompress adds a [listener.compress] table with keys to minimal's
// listener, and after to the end.
func withCompress(keys, after string) string {
	return strings.Replace(minimal, "[[pool]]", "  [listener.compress]\n"+keys+"\n[[pool]]", 1) + after
}

func TestCompressConfig(t *testing.T) {
	cfg, err := parseIn(t, withCompress("", ""))
	if err != nil {
		t.Fatal(err)
	}
	cp := cfg.Listeners[0].Compress
	if cp == nil || !slices.Equal(cp.Algorithms, []string{"zstd", "br", "gzip"}) || !slices.Equal(cp.Types, DefaultCompressTypes) || cp.MinSize.Bytes != 1024 {
		t.Errorf("defaults: %+v", cp)
	}
	cfg, err = parseIn(t, withCompress(`  algorithms = ["gzip", "br"]
  types = ["Text/HTML", "application/*"]
  min_size = 0`, ""))
	if err != nil {
		t.Fatal(err)
	}
	cp = cfg.Listeners[0].Compress
	if !slices.Equal(cp.Algorithms, []string{"gzip", "br"}) || !slices.Equal(cp.Types, []string{"text/html", "application/*"}) || cp.MinSize.Bytes != 0 {
		t.Errorf("set: %+v", cp)
	}
	if cfg, err := parseIn(t, minimal); err != nil || cfg.Listeners[0].Compress != nil {
		t.Errorf("without the table: %v %+v", err, cfg.Listeners[0].Compress)
	}
}

func TestCompressConfigErrors(t *testing.T) {
	tcp := `
[[listener]]
name = "db"
bind = "127.0.0.1:5433"
mode = "tcp"
pool = "web"
  [listener.compress]
`
	for _, tc := range []struct {
		name, keys, after, want string
	}{
		{"unknown algorithm", `  algorithms = ["gzip", "deflate"]`, "", `listener[0].compress.algorithms: "deflate" is not one of zstd, br, gzip`},
		{"identity", `  algorithms = ["identity"]`, "", `listener[0].compress.algorithms: "identity" is not one of zstd, br, gzip`},
		{"no algorithm", `  algorithms = []`, "", `listener[0].compress.algorithms: is empty`},
		{"twice", `  algorithms = ["br", "gzip", "br"]`, "", `listener[0].compress.algorithms: "br" is listed twice`},
		{"no type", `  types = []`, "", `listener[0].compress.types: is empty`},
		{"not a media type", `  types = ["json"]`, "", `listener[0].compress.types: "json" is not a media type`},
		{"parameters", `  types = ["text/html; charset=utf-8"]`, "", `is not a media type`},
		{"every type", `  types = ["*/*"]`, "", `listener[0].compress.types: "*/*" would compress every type`},
		{"bad size", `  min_size = "1 parsec"`, "", `listener[0].compress.min_size:`},
		{"negative size", `  min_size = -1`, "", `listener[0].compress.min_size: must be 0`},
		{"tcp listener", "", tcp, `listener[1].compress: is for http listeners`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseIn(t, withCompress(tc.keys, tc.after))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
	// The error names the key's line.
	_, err := parseIn(t, withCompress(`  algorithms = ["lz4"]`, ""))
	if err == nil || !regexp.MustCompile(`:\d+: listener\[0\]\.compress\.algorithms: "lz4"`).MatchString(err.Error()) {
		t.Errorf("want the file, line and key in %v", err)
	}
}
