package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// results collects measurements by contender and scenario.
type results struct {
	raw map[string]map[string][]measurement
}

func newResults() *results { return &results{raw: map[string]map[string][]measurement{}} }

func (r *results) add(contender, scenario string, m measurement) {
	if r.raw[contender] == nil {
		r.raw[contender] = map[string][]measurement{}
	}
	r.raw[contender][scenario] = append(r.raw[contender][scenario], m)
}

// metric is one row of the report.
type metric struct {
	scenario string
	label    string
	get      func(measurement) float64
	format   string
	lower    bool // lower is better
}

var metrics = []metric{
	{"keepalive", "TLS keep-alive HTTP/1.1 GET (wrk -t1 -c64): req/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"keepalive", "same: proxy CPU per request (µs)", func(m measurement) float64 { return m.CPUPer }, "%.1f", true},
	{"keepalive", "same: p99 latency (ms)", func(m measurement) float64 { return m.P99 }, "%.2f", true},
	{"logged", "same, every request logged to a file (lb combined, HAProxy option httplog, NGINX combined buffer=64k): req/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"logged", "same: proxy CPU per request (µs)", func(m measurement) float64 { return m.CPUPer }, "%.1f", true},
	{"logged", "same: p99 latency (ms)", func(m measurement) float64 { return m.P99 }, "%.2f", true},
	{"default", "same, each proxy's out-of-the-box config and an access log to a file: req/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"default", "same: proxy CPU per request (µs)", func(m measurement) float64 { return m.CPUPer }, "%.1f", true},
	{"default", "same: p99 latency (ms)", func(m measurement) float64 { return m.P99 }, "%.2f", true},
	{"handshake", "new TLS connection per request, full handshake: handshakes/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"handshake", "same: proxy CPU per handshake (µs)", func(m measurement) float64 { return m.CPUPer }, "%.0f", true},
	{"h2", "HTTP/2 GET (h2load -c16 -m10): req/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"h2", "same: proxy CPU per request (µs)", func(m measurement) float64 { return m.CPUPer }, "%.1f", true},
	{"cache", "cache hit, TLS keep-alive GET (wrk -t1 -c64): req/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"cache", "same: proxy CPU per request (µs)", func(m measurement) float64 { return m.CPUPer }, "%.1f", true},
	{"idle", "RSS per idle TLS connection (KB)", func(m measurement) float64 { return m.RSSPer }, "%.1f", true},
	{"tcp-throughput", "plain TCP, 4 connections uploading: MB/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"tcp-throughput", "same: proxy CPU per MB (µs)", func(m measurement) float64 { return m.CPUPer }, "%.0f", true},
	{"tcp-connrate", "plain TCP, a connection per 1-byte exchange: connections/s", func(m measurement) float64 { return m.Rate }, "%.0f", false},
	{"tcp-connrate", "same: proxy CPU per connection (µs)", func(m measurement) float64 { return m.CPUPer }, "%.1f", true},
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (r *results) values(contender string, m metric) []float64 {
	var v []float64
	for _, x := range r.raw[contender][m.scenario] {
		v = append(v, m.get(x))
	}
	return v
}

// ratios are a's value of m divided by b's, one for each round both ran.
func (r *results) ratios(a, b string, m metric) []float64 {
	byRound := map[int]float64{}
	for _, x := range r.raw[b][m.scenario] {
		byRound[x.Round] = m.get(x)
	}
	var out []float64
	for _, x := range r.raw[a][m.scenario] {
		if v, ok := byRound[x.Round]; ok && v > 0 {
			out = append(out, m.get(x)/v)
		}
	}
	return out
}

// markdown renders medians with min-max, and ratios of lb to the others.
func (r *results) markdown(o options, e *env) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "## Side by side, %s\n\n", time.Now().UTC().Format("2006-01-02"))
	rounds := fmt.Sprintf("%d round", o.rounds)
	if o.rounds != 1 {
		rounds += "s"
	}
	if r.hasMetrics(o) {
		rounds += fmt.Sprintf(" of %s", o.duration)
	}
	fmt.Fprintf(&b, "Machine: %s, %d cores (%s), host %s. %s per scenario; in each round every scenario runs every contender in turn, the order rotated by one each round. Proxy pinned to core %s with one worker, load generator, backends and lbbench on core %s.\n\n",
		cpuModel(), numCores(), runtime.GOARCH, host, rounds, o.proxyCPU, o.loadCPU)
	for _, c := range o.contenders {
		if ct := e.contenders[c]; ct != nil {
			fmt.Fprintf(&b, "- %s: %s\n", c, ct.version)
		}
	}
	if len(o.args) > 0 {
		fmt.Fprintf(&b, "\nCommand: `bench/run.sh %s`\n", strings.Join(o.args, " "))
	}
	for _, n := range e.notes {
		fmt.Fprintf(&b, "\nNote: %s\n", n)
	}
	if r.hasMetrics(o) {
		r.mainTable(&b, o)
		r.setupNotes(&b, o, e)
	}
	for _, s := range []string{"uploads", "downloads"} {
		if contains(o.scenarios, s) {
			r.bodyTable(&b, o, s)
		}
	}
	return b.String()
}

// hasMetrics reports whether a scenario of the main table ran.
func (r *results) hasMetrics(o options) bool {
	for _, m := range metrics {
		if contains(o.scenarios, m.scenario) {
			return true
		}
	}
	return false
}

// mainTable writes the table of the throughput, CPU and idle-memory
// scenarios.
func (r *results) mainTable(b *strings.Builder, o options) {
	b.WriteString("\nMedian (min–max) of the rounds. Ratios are lb ÷ the other taken within each round, where the contenders run one after the other on the same scenario, seconds apart; the table gives the median of those per-round ratios and, in brackets, the lowest and highest, which is how far one round can be trusted on this machine. For CPU, latency and memory lower is better.\n\n")
	b.WriteString("| scenario |")
	for _, c := range o.contenders {
		fmt.Fprintf(b, " %s |", c)
	}
	others := []string{}
	for _, c := range o.contenders {
		if c != "lb" {
			others = append(others, c)
			fmt.Fprintf(b, " lb ÷ %s |", c)
		}
	}
	b.WriteString("\n|---|")
	for range len(o.contenders) + len(others) {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, m := range metrics {
		if !contains(o.scenarios, m.scenario) {
			continue
		}
		label := m.label
		if m.scenario == "h2" && o.h2RPS > 0 {
			label = strings.Replace(label, "-m10)", fmt.Sprintf("-m10 --rps %d: %d req/s offered)", o.h2RPS, 16*o.h2RPS), 1)
		}
		fmt.Fprintf(b, "| %s |", label)
		med := map[string]float64{}
		for _, c := range o.contenders {
			v := r.values(c, m)
			if len(v) == 0 {
				b.WriteString(" – |")
				continue
			}
			med[c] = median(v)
			lo, hi := minMax(v)
			fmt.Fprintf(b, " "+m.format+" ("+m.format+"–"+m.format+") |", med[c], lo, hi)
		}
		for _, c := range others {
			ratios := r.ratios("lb", c, m)
			if len(ratios) == 0 {
				b.WriteString(" – |")
				continue
			}
			lo, hi := minMax(ratios)
			fmt.Fprintf(b, " %.2f× (%.2f–%.2f) |", median(ratios), lo, hi)
		}
		b.WriteString("\n")
	}
	for _, core := range []struct {
		name string
		get  func(measurement) float64
	}{{"the proxy's core", func(x measurement) float64 { return x.Noise }}, {"the load core", func(x measurement) float64 { return x.NoiseLoad }}} {
		var parts []string
		for _, c := range o.contenders {
			var v []float64
			for _, s := range o.scenarios {
				for _, x := range r.raw[c][s] {
					if x.RSSPer == 0 && x.Body == nil {
						v = append(v, core.get(x))
					}
				}
			}
			if len(v) > 0 {
				_, hi := minMax(v)
				parts = append(parts, fmt.Sprintf("%s %.1f%%, %.1f%%", c, median(v), hi))
			}
		}
		fmt.Fprintf(b, "\nShare of %s used by other processes during each run (median, max): %s.\n", core.name, strings.Join(parts, "; "))
	}
	var again, noisy []string
	for _, c := range o.contenders {
		for _, s := range o.scenarios {
			for _, x := range r.raw[c][s] {
				if x.Runs > 1 {
					again = append(again, fmt.Sprintf("%s %s round %d (%d runs)", c, s, x.Round, x.Runs))
				}
				if x.Noisy {
					noisy = append(noisy, fmt.Sprintf("%s %s round %d", c, s, x.Round))
				}
			}
		}
	}
	if len(again) > 0 {
		fmt.Fprintf(b, "\nRun again after waiting for the machine to quiet down, because others used more than %.0f%% of a core: %s.\n", o.maxNoise, strings.Join(again, ", "))
	}
	if len(noisy) > 0 {
		fmt.Fprintf(b, "\nStill over %.0f%% when kept: %s.\n", o.maxNoise, strings.Join(noisy, ", "))
	}
}

// setupNotes writes what the run found about the contenders besides the
// numbers: the TLS they negotiated, how much of each request they
// logged, and their processes and threads.
func (r *results) setupNotes(b *strings.Builder, o options, e *env) {
	suites := "HAProxy and NGINX were given TLS 1.3 suites with TLS_AES_128_GCM_SHA256 first (-suites aes128), as lb's Go TLS picks it"
	if o.suites == "native" {
		suites = "HAProxy and NGINX kept their own TLS 1.3 suite order (-suites native)"
	}
	fmt.Fprintf(b, "\nTLS: %s. What an OpenSSL client (wrk, h2load) negotiated, by openssl s_client:", suites)
	for _, v := range []variant{tuned, defaults} {
		var parts []string
		for _, c := range o.contenders {
			if ct := e.contenders[c]; ct != nil && ct.tls[v] != "" {
				parts = append(parts, fmt.Sprintf("%s %s", c, ct.tls[v]))
			}
		}
		if len(parts) > 0 {
			name := "the tuned and logged configs"
			if v == defaults {
				name = "the default configs"
			}
			fmt.Fprintf(b, " %s: %s;", name, strings.Join(parts, ", "))
		}
	}
	var hs []string
	for _, c := range o.contenders {
		if ms := r.raw[c]["handshake"]; len(ms) > 0 && ms[0].TLS != "" {
			hs = append(hs, fmt.Sprintf("%s %s", c, ms[0].TLS))
		}
	}
	if len(hs) > 0 {
		fmt.Fprintf(b, " the handshake client (Go): %s", strings.Join(hs, ", "))
	}
	b.WriteString(".\n")
	for _, s := range []string{"logged", "default"} {
		var parts []string
		for _, c := range o.contenders {
			var lines, served float64
			for _, m := range r.raw[c][s] {
				lines += float64(m.LogLines)
				served += m.Served
			}
			if served > 0 {
				parts = append(parts, fmt.Sprintf("%s %.3f", c, lines/served))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(b, "\nAccess log lines written per request served, %s scenario (warm-up included; the start-up check adds one): %s.\n", s, strings.Join(parts, ", "))
		}
	}
	var pt []string
	for _, s := range o.scenarios {
		for _, c := range o.contenders {
			if ms := r.raw[c][s]; len(ms) > 0 && ms[0].Procs > 0 && (s == "keepalive" || s == "default") {
				pt = append(pt, fmt.Sprintf("%s %s %d/%d", c, s, ms[0].Procs, ms[0].Threads))
			}
		}
	}
	if len(pt) > 0 {
		fmt.Fprintf(b, "\nProcesses/threads of each proxy, all on its one core: %s.\n", strings.Join(pt, ", "))
	}
}

func minMax(v []float64) (float64, float64) {
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "model name") {
			_, v, _ := strings.Cut(line, ":")
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// bodyTable writes the table of the uploads or downloads scenario: one
// row per contender and round.
func (r *results) bodyTable(b *strings.Builder, o options, scenario string) {
	per := "upload"
	if scenario == "uploads" {
		framing := "Content-Length"
		if o.uploadChunked {
			framing = "chunked"
		}
		fmt.Fprintf(b, "\n### Uploads: %d × %s, TLS HTTP/1.1 POST (%s); the backend reads each at %s/s\n\n",
			o.uploads, formatSize(o.uploadSize), framing, formatSize(o.backendRate))
	} else {
		per = "download"
		fmt.Fprintf(b, "\n### Downloads: %d × %s, TLS HTTP/1.1 GET; each client reads at %s/s\n\n",
			o.downloads, formatSize(o.downloadSize), formatSize(o.downloadRate))
	}
	fmt.Fprintf(b, "| proxy | completed | failed | peak RSS (MiB) | RSS per %s (KiB) | VmHWM (MiB) | wall time (s) | kernel TCP buffers (MiB) | disk (MiB) | contents checked |\n", per)
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	var stopped, errs, samples []string
	for _, c := range o.contenders {
		for i, m := range r.raw[c][scenario] {
			x := m.Body
			if x == nil {
				continue
			}
			name := c
			if o.rounds > 1 {
				name = fmt.Sprintf("%s (round %d)", c, i+1)
			}
			hwm := "–"
			if x.HWM > 0 {
				hwm = fmt.Sprintf("%.0f", float64(x.HWM)/(1<<20))
			}
			failed := strconv.FormatInt(x.Failed, 10)
			if x.Stopped != "" {
				failed += " (stopped)"
				stopped = append(stopped, fmt.Sprintf("%s: %s", name, x.Stopped))
			}
			if len(x.Errors) > 0 {
				errs = append(errs, fmt.Sprintf("%s: %s", name, errorList(x.Errors)))
			}
			if len(samples) == 0 && len(x.Sample) > 0 {
				samples = append(samples, fmt.Sprintf("%s: %s", name, strings.Join(x.Sample, "; ")))
			}
			fmt.Fprintf(b, "| %s | %d of %d | %s | %.0f | %.0f | %s | %.0f | %.0f | %.0f | %d, %d wrong |\n",
				name, x.Completed, x.N, failed, float64(x.PeakRSS)/(1<<20), x.PerConnKB, hwm, x.WallS,
				float64(x.TCPMem)/(1<<20), float64(x.Disk)/(1<<20), x.Checked, x.Mismatched)
		}
	}
	b.WriteString("\nPeak RSS: the highest of the proxy's resident memory (VmRSS summed over its processes: NGINX's master and worker), sampled every 100 ms; per " + per + ": that peak less the RSS before the load, divided by their number. VmHWM: the processes' own high-water marks summed at the end (– when the bench stopped the proxy). Kernel TCP buffers: the growth of every TCP socket's buffers on the machine at their peak (/proc/net/sockstat), the proxy's and the load generators' alike. Disk: the growth of the used space of the work folder's file system at its peak, where NGINX spools bodies. Every byte count is checked; the contents of one body in " + strconv.Itoa(o.checkEvery) + " are compared.\n")
	if len(stopped) > 0 {
		b.WriteString("\nStopped by the bench: " + strings.Join(stopped, "; ") + ".\n")
	}
	if len(errs) > 0 {
		b.WriteString("\nFailures by kind: " + strings.Join(errs, "; ") + ".\n")
	}
	if len(samples) > 0 {
		b.WriteString("\nSample of checked transfers, " + samples[0] + ".\n")
	}
}

func errorList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d × %s", m[k], k)
	}
	return strings.Join(parts, ", ")
}

// mib writes a byte count in MiB.
func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
