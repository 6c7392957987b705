package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/offloadlb/lb/internal/certgen"
	"github.com/offloadlb/lb/pkg/config"
)

// testEnv is an env with a certificate and made-up backend addresses,
// enough to write every contender's configs.
func testEnv(t *testing.T, o options) *env {
	t.Helper()
	work := t.TempDir()
	e := &env{o: o, work: work, contenders: map[string]*contender{}, cache: contains(o.scenarios, "cache"),
		backends: []string{"127.0.0.1:1", "127.0.0.1:2"}, tcpSinks: []string{"127.0.0.1:3", "127.0.0.1:4"}}
	pair, err := certgen.New(certgen.Options{Names: []string{"localhost"}, Key: certgen.ECDSA}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.certFile, e.keyFile, err = pair.Write(work, "site"); err != nil {
		t.Fatal(err)
	}
	e.comboFile = filepath.Join(work, "combo.pem")
	if err := writeFile(e.comboFile, string(pair.CertPEM)+string(pair.KeyPEM)); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestConfigs writes every contender's config in every variant and has
// each proxy check its own (HAProxy and NGINX where installed), and checks
// what sets the variants apart.
func TestConfigs(t *testing.T) {
	for _, suites := range []string{"aes128", "native"} {
		t.Run(suites, func(t *testing.T) {
			e := testEnv(t, options{scenarios: []string{"keepalive", "cache", "tcp-connrate"}, suites: suites, proxyCPU: "0", loadCPU: "1"})
			for _, name := range []string{"lb", "haproxy", "nginx"} {
				c := &contender{name: name, kind: name, suites: suites, port: 8443, tcpPort: 8444, dir: filepath.Join(e.work, name), tls: map[variant]string{}}
				os.MkdirAll(c.dir, 0o755)
				configs := map[variant]string{}
				switch name {
				case "lb":
					if err := e.lbConfigs(c, configs); err != nil {
						t.Fatal(err)
					}
				case "haproxy":
					e.haproxyConfigs(c, configs)
				case "nginx":
					e.nginxConfigs(c, configs)
				}
				for _, v := range []variant{tuned, logged, defaults} {
					text := configs[v]
					if text == "" {
						t.Fatalf("%s: no %s config", name, v)
					}
					// HAProxy logs to stdout, which lbbench points at the file.
					if log := c.accessLog(v); log != "" && name != "haproxy" && !strings.Contains(text, log) {
						t.Errorf("%s %s: access log %q not in the config:\n%s", name, v, log, text)
					}
					if logs := strings.Contains(text, "access-") || strings.Contains(text, "httplog"); logs != (v != tuned) {
						t.Errorf("%s %s: logs %v:\n%s", name, v, logs, text)
					}
					if name != "lb" && v != defaults && (suites == "aes128") != strings.Contains(text, tls13Suites) {
						t.Errorf("%s %s with -suites %s:\n%s", name, v, suites, text)
					}
					checkConfig(t, c, v, text)
				}
			}
		})
	}
}

// checkConfig has the proxy check text, when it is installed.
func checkConfig(t *testing.T, c *contender, v variant, text string) {
	t.Helper()
	var cmd *exec.Cmd
	switch c.name {
	case "lb":
		if _, err := config.Parse([]byte(text), filepath.Join(c.dir, "lb.toml")); err != nil {
			t.Errorf("lb %s config refused: %v\n%s", v, err, text)
		}
		return
	case "haproxy":
		f := filepath.Join(c.dir, string(v)+".cfg")
		writeFile(f, text)
		cmd = exec.Command("haproxy", "-c", "-q", "-f", f)
	case "nginx":
		if strings.Contains(text, "load_module") && !fileExists(nginxStreamModule) {
			return
		}
		f := filepath.Join(c.dir, string(v)+".conf")
		writeFile(f, text)
		cmd = exec.Command("nginx", "-q", "-t", "-p", c.dir, "-c", f)
	}
	if _, err := exec.LookPath(cmd.Path); err != nil {
		t.Logf("%s not installed; its %s config is not checked", c.name, v)
		return
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s refused its %s config: %v\n%s\n%s", c.name, v, err, out, text)
	}
}

func TestParseScenarios(t *testing.T) {
	got, err := parseScenarios("keepalive,tcp,logged,tcp-connrate")
	if err != nil {
		t.Fatal(err)
	}
	if want := "keepalive,tcp-throughput,tcp-connrate,logged"; strings.Join(got, ",") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if _, err := parseScenarios("keepalive,nope"); err == nil {
		t.Error("an unknown scenario was taken")
	}
}

func TestRatiosPairRounds(t *testing.T) {
	r := newResults()
	// haproxy's round 2 is missing: lb's round 2 has nothing to pair with.
	for i, v := range []float64{10, 20, 30} {
		r.add("lb", "keepalive", measurement{Round: i + 1, CPUPer: v})
	}
	r.add("haproxy", "keepalive", measurement{Round: 1, CPUPer: 20})
	r.add("haproxy", "keepalive", measurement{Round: 3, CPUPer: 20})
	m := metric{scenario: "keepalive", get: func(m measurement) float64 { return m.CPUPer }}
	got := r.ratios("lb", "haproxy", m)
	if len(got) != 2 || got[0] != 0.5 || got[1] != 1.5 {
		t.Errorf("ratios %v, want [0.5 1.5]", got)
	}
}
