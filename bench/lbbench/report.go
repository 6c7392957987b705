package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
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

// markdown renders medians with min-max, and ratios of lb to the others.
func (r *results) markdown(o options, e *env) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "## Side by side, %s\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "Machine: %s, %d cores (%s), host %s. %d rounds of %s per scenario, contenders interleaved; proxy pinned to core %s with one worker, load generator and backends on core %s.\n\n",
		cpuModel(), runtime.NumCPU(), runtime.GOARCH, host, o.rounds, o.duration, o.proxyCPU, o.loadCPU)
	for _, c := range o.contenders {
		if ct := e.contenders[c]; ct != nil {
			fmt.Fprintf(&b, "- %s: %s\n", c, ct.version)
		}
	}
	b.WriteString("\nMedian (min–max) of the rounds. Ratios are lb ÷ the other, taken within each round (the contenders of a round run minutes apart at most) and then the median over rounds, which keeps a slow spell of a shared machine from landing on one side; for CPU, latency and memory lower is better.\n\n")
	b.WriteString("| scenario |")
	for _, c := range o.contenders {
		fmt.Fprintf(&b, " %s |", c)
	}
	others := []string{}
	for _, c := range o.contenders {
		if c != "lb" {
			others = append(others, c)
			fmt.Fprintf(&b, " lb ÷ %s |", c)
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
		fmt.Fprintf(&b, "| %s |", m.label)
		med := map[string]float64{}
		for _, c := range o.contenders {
			v := r.values(c, m)
			if len(v) == 0 {
				b.WriteString(" – |")
				continue
			}
			med[c] = median(v)
			lo, hi := minMax(v)
			fmt.Fprintf(&b, " "+m.format+" ("+m.format+"–"+m.format+") |", med[c], lo, hi)
		}
		for _, c := range others {
			lbv, ov := r.values("lb", m), r.values(c, m)
			var ratios []float64
			for i := 0; i < len(lbv) && i < len(ov); i++ {
				if ov[i] > 0 {
					ratios = append(ratios, lbv[i]/ov[i])
				}
			}
			if len(ratios) == 0 {
				b.WriteString(" – |")
				continue
			}
			fmt.Fprintf(&b, " %.2f× |", median(ratios))
		}
		b.WriteString("\n")
	}
	b.WriteString("\nShare of the proxy's core used by other processes during each run (median, max): ")
	var parts []string
	for _, c := range o.contenders {
		var v []float64
		for _, s := range o.scenarios {
			for _, x := range r.raw[c][s] {
				if x.RSSPer == 0 {
					v = append(v, x.Noise)
				}
			}
		}
		if len(v) > 0 {
			_, hi := minMax(v)
			parts = append(parts, fmt.Sprintf("%s %.1f%%, %.1f%%", c, median(v), hi))
		}
	}
	b.WriteString(strings.Join(parts, "; ") + ".\n")
	return b.String()
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
