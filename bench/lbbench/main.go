// Command lbbench runs lb, HAProxy and NGINX side by side on this machine,
// in front of the same backends, under the same load, and prints a
// Markdown table of the results. See bench/README.md.
//
// Each proxy runs alone on one core (taskset) with one worker; the load
// generator and the backends share the other core. Besides requests per
// second and latency it reports each proxy's own CPU time per request, read
// from /proc before and after each run, because the load generator's core
// is the bottleneck on a two-core machine.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

type options struct {
	rounds     int
	duration   time.Duration
	warmup     time.Duration
	scenarios  []string
	contenders []string
	conns      int
	hsConns    int
	idleConns  int
	proxyCPU   string
	loadCPU    string
	lbBin      string
	out        string
	maxNoise   float64
	quietWait  time.Duration
	keep       bool
	suites     string        // TLS 1.3 suites of HAProxy and NGINX: aes128 or native
	idleSettle time.Duration // idle scenario: wait before memory is read
	h2RPS      int           // h2 scenario: requests per second per connection, 0 for as fast as it goes

	// The uploads and downloads scenarios (bodies.go).
	uploads       int
	uploadSize    int64
	uploadChunked bool
	backendRate   int64
	downloads     int
	downloadSize  int64
	downloadRate  int64
	bodyTimeout   time.Duration
	checkEvery    int
	sockbuf       int64
	rssCap        int64
	minFreeDisk   int64
	lbMaxBody     string

	args   []string // the command line, for the report
	nofile int      // RLIMIT_NOFILE of the contenders
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "handshake-client":
			os.Exit(handshakeClient(os.Args[2:]))
		case "idle-client":
			os.Exit(idleClient(os.Args[2:]))
		case "tcp-sink":
			os.Exit(tcpSink(os.Args[2:]))
		case "tcp-client":
			os.Exit(tcpClient(os.Args[2:]))
		case "body-backend":
			os.Exit(bodyBackend(os.Args[2:]))
		case "upload-client":
			os.Exit(uploadClient(os.Args[2:]))
		case "download-client":
			os.Exit(downloadClient(os.Args[2:]))
		}
	}
	var o options
	var scen, cont string
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; contenders are interleaved within each round")
	flag.DurationVar(&o.duration, "d", 10*time.Second, "length of each measured run")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured load before each run")
	flag.StringVar(&scen, "scenarios", "keepalive,handshake,h2,idle", "scenarios to run: "+strings.Join(allScenarios, ", ")+"; tcp for both tcp ones")
	flag.StringVar(&cont, "contenders", "lb,haproxy,nginx", "proxies to compare: lb, haproxy, nginx; nginx-buffered (NGINX's default request and response buffering on the uploads and downloads listener); haproxy-native, nginx-native (their own TLS 1.3 suite order, whatever -suites says)")
	flag.IntVar(&o.conns, "c", 64, "wrk connections for the keep-alive scenario")
	flag.IntVar(&o.hsConns, "hs-c", 16, "concurrent connections for the handshake scenario")
	flag.IntVar(&o.idleConns, "idle", 5000, "TLS connections held for the idle-memory scenario")
	flag.StringVar(&o.proxyCPU, "proxy-cpu", "0", "core the proxy is pinned to")
	flag.StringVar(&o.loadCPU, "load-cpu", "1", "core the load generator and backends are pinned to")
	flag.StringVar(&o.lbBin, "lb", "", "lb binary (default: build ./cmd/lb)")
	flag.StringVar(&o.out, "out", "", "also write the Markdown report to this file")
	flag.Float64Var(&o.maxNoise, "max-noise", 10, "run a measurement again (up to 3 times, each after waiting for quiet) when other processes used more than this % of the proxy's core or of the load core")
	flag.BoolVar(&o.keep, "keep", false, "keep the work folder (configs, logs)")
	flag.DurationVar(&o.quietWait, "quiet-wait", time.Hour, "longest wait for other processes to leave the cores before a run and before running a noisy measurement again")
	flag.StringVar(&o.suites, "suites", "aes128", "TLS 1.3 cipher suites of HAProxy and NGINX (but in the default scenario): aes128 prefers TLS_AES_128_GCM_SHA256, which lb picks; native leaves each to its own order (OpenSSL's: AES-256 first)")
	flag.IntVar(&o.h2RPS, "h2-rps", 0, "h2 scenario: requests per second of each of the 16 connections (h2load --rps), so that every proxy serves the same rate; 0: as fast as they go")
	flag.DurationVar(&o.idleSettle, "idle-settle", 5*time.Second, "idle scenario: how long after the last connection is open memory is read")
	sizeVar := func(p *int64, name string, def int64, usage string) {
		v := (*sizeValue)(p)
		*v = sizeValue(def)
		flag.Var(v, name, usage)
	}
	flag.IntVar(&o.uploads, "uploads", 1000, "uploads scenario: concurrent uploads, one TLS connection each")
	sizeVar(&o.uploadSize, "upload-size", 10<<20, "uploads scenario: bytes per upload")
	flag.BoolVar(&o.uploadChunked, "upload-chunked", false, "uploads scenario: send the bodies chunked rather than with Content-Length")
	sizeVar(&o.backendRate, "backend-rate", 1<<20, "uploads scenario: bytes per second each backend connection reads a request body at (0: no limit)")
	flag.IntVar(&o.downloads, "downloads", 10000, "downloads scenario: concurrent downloads, one TLS connection each")
	sizeVar(&o.downloadSize, "download-size", 1<<20, "downloads scenario: bytes per download")
	sizeVar(&o.downloadRate, "download-rate", 16<<10, "downloads scenario: bytes per second each client reads at (0: no limit)")
	flag.DurationVar(&o.bodyTimeout, "body-timeout", 4*time.Minute, "uploads and downloads: the longest one contender's run may take; transfers not done by then fail")
	flag.IntVar(&o.checkEvery, "check-every", 20, "uploads and downloads: compare the content of one body in this many (every byte count is checked)")
	sizeVar(&o.sockbuf, "sockbuf", 64<<10, "uploads and downloads: socket buffer size of the clients' and backend's connections (0: the kernel's autotuning)")
	sizeVar(&o.rssCap, "rss-cap", 12<<30, "uploads and downloads: stop a proxy whose RSS passes this")
	sizeVar(&o.minFreeDisk, "min-free-disk", 8<<30, "uploads and downloads: stop a proxy when the work folder's file system has less free space than this")
	flag.StringVar(&o.lbMaxBody, "lb-max-body", "0", "lb's max_request_body on the uploads and downloads listener (0: no limit; if lb -check refuses it, 200GiB)")
	flag.Parse()
	pinSelf(o.loadCPU)
	o.args = os.Args[1:]
	var err error
	if o.scenarios, err = parseScenarios(scen); err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		os.Exit(2)
	}
	o.contenders = strings.Split(cont, ",")
	if o.suites != "aes128" && o.suites != "native" {
		fmt.Fprintln(os.Stderr, "lbbench: -suites is aes128 or native")
		os.Exit(2)
	}

	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "lbbench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	tools := []string{"taskset", "wrk", "nginx", "haproxy"}
	if contains(o.scenarios, "h2") {
		tools = append(tools, "h2load")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (bench/run.sh installs what is missing)", tool)
		}
	}
	var notes []string
	if wantsBodies(o.scenarios) {
		o.nofile = raiseFileLimit(200000)
		// Each transfer holds two descriptors in the proxy, its client's
		// and its backend's; leave some for listeners, logs and checks.
		most := (o.nofile - 200) / 2
		for _, t := range []struct {
			n    *int
			name string
		}{{&o.downloads, "downloads"}, {&o.uploads, "uploads"}} {
			if contains(o.scenarios, t.name) && *t.n > most {
				n := fmt.Sprintf("-%s lowered from %d to %d: the open-file limit (RLIMIT_NOFILE) is %d and could not be raised, and each transfer holds two descriptors in the proxy.",
					t.name, *t.n, most, o.nofile)
				logf("%s", n)
				notes = append(notes, n)
				*t.n = most
			}
		}
	}
	work, err := os.MkdirTemp("", "lbbench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	} else {
		logf("work folder: %s", work)
	}
	// Stopped from outside (^C, timeout): stop what this run started.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("%s: stopping the proxies, backends and load generators this run started", s)
		stopping.Store(true) // nothing new starts
		stopDescendants()
		stopDescendants() // what was starting meanwhile
		if !o.keep {
			os.RemoveAll(work)
		}
		os.Exit(1)
	}()
	if o.lbBin == "" {
		o.lbBin = filepath.Join(work, "lb-bin")
		logf("building lb")
		commit := strings.TrimSpace(output("git", "rev-parse", "--short=12", "HEAD"))
		if strings.TrimSpace(output("git", "status", "--porcelain", "--untracked-files=no")) != "" {
			commit += "-dirty"
		}
		build := exec.Command("go", "build", "-o", o.lbBin,
			"-ldflags", "-X github.com/offloadlb/lb/internal/version.Commit="+commit, "./cmd/lb")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building lb: %w", err)
		}
	}
	env, err := setup(o, work)
	if err != nil {
		return err
	}
	env.notes = append(notes, env.notes...)
	defer env.stop()

	for _, name := range o.contenders {
		if env.contenders[name] == nil {
			return fmt.Errorf("unknown contender %q", name)
		}
	}
	env.waitQuiet()
	results := newResults()
	for round := 1; round <= o.rounds; round++ {
		// Rotate the order each round so no proxy always runs first.
		order := rotate(o.contenders, round-1)
		// Scenario by scenario, every contender in turn: the runs whose
		// ratio is taken are then seconds apart, not the length of a
		// contender's whole set of scenarios (minutes), in which a slow
		// spell of a shared machine can come and go.
		for _, s := range o.scenarios {
			for _, name := range order {
				m, err := env.measureQuiet(env.contenders[name], s, round)
				if errors.Is(err, errSkip) {
					continue
				}
				if err != nil {
					return fmt.Errorf("round %d, %s, %s: %w", round, name, s, err)
				}
				m.Round = round
				logf("round %d %-8s %-9s %s", round, name, s, m.summary())
				results.add(name, s, m)
			}
		}
	}
	report := results.markdown(o, env)
	fmt.Print(report)
	if o.out != "" {
		if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(o.out, []byte(report), 0o644); err != nil {
			return err
		}
		raw, _ := json.MarshalIndent(results.raw, "", "  ")
		os.WriteFile(strings.TrimSuffix(o.out, ".md")+".json", raw, 0o644)
	}
	return nil
}

// raiseFileLimit lifts this process's RLIMIT_NOFILE, and so that of
// everything it starts, to n descriptors, or as far as it is allowed
// (raising the hard limit takes CAP_SYS_RESOURCE), and returns the
// limit in force: a downloads run holds tens of thousands of sockets in
// the proxy, the clients and the backend. (Once a program sets the limit
// itself, Go no longer restores the original one in the processes it
// starts.)
func raiseFileLimit(n uint64) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	want := syscall.Rlimit{Cur: max(n, lim.Cur), Max: max(n, lim.Max)}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return int(want.Cur)
	}
	// Not allowed above the hard limit: go as far as it.
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	logf("open files limited to %d (raising it to %d was refused)", lim.Max, n)
	return int(lim.Cur)
}

// stopping is set once lbbench is told to stop: nothing new starts.
var stopping atomic.Bool

// errStopping is what starting something returns once stopping is set.
var errStopping = errors.New("lbbench is stopping")

// stopDescendants ends every process this one started, and theirs: a
// SIGTERM, then a SIGKILL to those still there after 5 seconds.
func stopDescendants() {
	pids := tree(os.Getpid())[1:]
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range pids {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// alive reports whether process p is there and not a zombie waiting for
// its parent.
func alive(p int) bool {
	f := statFields(p)
	return len(f) > 2 && f[2] != "Z"
}

// parseScenarios reads -scenarios: known names, "tcp" for both tcp
// scenarios, each once in the order given.
func parseScenarios(list string) ([]string, error) {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		names := []string{s}
		if s == "tcp" {
			names = []string{"tcp-throughput", "tcp-connrate"}
		} else if !contains(allScenarios, s) {
			return nil, fmt.Errorf("unknown scenario %q (%s; tcp for both tcp ones)", s, strings.Join(allScenarios, ", "))
		}
		for _, n := range names {
			if !contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out, nil
}

// pinSelf runs this program again pinned to the load generator's core,
// unless it already is, so that none of its own threads (reading /proc,
// waiting for the load generators, Go's runtime) ever runs on the proxy's
// core and is counted there as noise or slows the proxy.
func pinSelf(core string) {
	if os.Getenv("LBBENCH_PINNED") != "" || allowedCPUs() == core {
		return
	}
	taskset, err := exec.LookPath("taskset")
	if err != nil {
		return // run() reports it
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	args := append([]string{"taskset", "-c", core, self}, os.Args[1:]...)
	err = syscall.Exec(taskset, args, append(os.Environ(), "LBBENCH_PINNED=1"))
	logf("running on core %s: %v; staying where it is", core, err)
}

// allowedCPUs is the list of cores this process may run on, as
// /proc/self/status writes it ("0-1", "1").
func allowedCPUs() string {
	data, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func rotate(s []string, n int) []string {
	n %= len(s)
	return append(append([]string{}, s[n:]...), s[:n]...)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// writeFile writes a file in the work folder.
func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o644)
}
