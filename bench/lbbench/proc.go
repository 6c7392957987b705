package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// What a run reads of the proxy from /proc: its CPU time and memory,
// summed over its process tree, and the busy time of the cores.

// cpuSample is a proxy's CPU time, lbbench's own (with everything it
// started), and the busy time of the proxy's and the load's cores.
type cpuSample struct {
	at    time.Time
	proxy float64 // seconds of CPU, the proxy's whole process tree
	own   float64 // seconds of CPU of lbbench and all it started, the proxy too
	cores map[string]coreTime
}

func (e *env) sample(pid int) cpuSample {
	return cpuSample{at: time.Now(), proxy: treeCPU(pid), own: ownCPU(), cores: coreTimes()}
}

// cpuMeasurement is what happened between two samples in which count
// requests (or handshakes, connections, MB) were served. Besides the
// proxy's CPU it reports the share of a core other processes took: on the
// proxy's core, the busy time that was not the proxy's; on the load core,
// the busy time of both cores that was neither lbbench's nor that of
// anything it started, less the first.
func (e *env) cpuMeasurement(before, after cpuSample, count float64) measurement {
	wall := after.at.Sub(before.at).Seconds()
	cpu := after.proxy - before.proxy
	m := measurement{Count: count, Rate: count / wall, ProxyCore: cpu / wall}
	if count > 0 {
		m.CPUPer = cpu / count * 1e6
	}
	p := after.cores[e.o.proxyCPU].sub(before.cores[e.o.proxyCPU])
	l := after.cores[e.o.loadCPU].sub(before.cores[e.o.loadCPU])
	if p.total > 0 && l.total > 0 {
		onProxy := max(0, p.busy-cpu)
		m.noise = onProxy / p.total * 100
		others := max(0, p.busy+l.busy-(after.own-before.own))
		m.NoiseLoad = max(0, others-onProxy) / l.total * 100
	}
	m.Noise = m.noise
	return m
}

// coreTime is the busy and total time of one core, in seconds.
type coreTime struct{ busy, total float64 }

func (a coreTime) sub(b coreTime) coreTime { return coreTime{a.busy - b.busy, a.total - b.total} }

// coreTimes reads the busy and total time of every core from /proc/stat,
// by number ("0", "1").
func coreTimes() map[string]coreTime {
	out := map[string]coreTime{}
	f, err := os.Open("/proc/stat")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 9 || !strings.HasPrefix(fields[0], "cpu") || fields[0] == "cpu" {
			continue
		}
		var v [8]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(fields[i+1], 64)
		}
		var total float64
		for _, x := range v {
			total += x
		}
		idle := v[3] + v[4] // idle, iowait; steal counts as busy
		out[strings.TrimPrefix(fields[0], "cpu")] = coreTime{(total - idle) / clkTck, total / clkTck}
	}
	return out
}

// numCores is the number of cores of the machine (runtime.NumCPU counts
// only those lbbench may run on).
func numCores() int { return len(coreTimes()) }

// ownCPU is the CPU seconds of lbbench and every process it started,
// those that ended and were waited for too.
func ownCPU() float64 {
	total := 0.0
	for _, p := range tree(os.Getpid()) {
		f := statFields(p)
		if len(f) > 16 {
			for _, i := range []int{13, 14, 15, 16} { // utime, stime, cutime, cstime
				v, _ := strconv.ParseFloat(f[i], 64)
				total += v / clkTck
			}
		}
	}
	return total
}

var clkTck = 100.0 // USER_HZ on Linux

// treeCPU is the user+system CPU seconds of pid and all its descendants.
func treeCPU(pid int) float64 {
	total := 0.0
	for _, p := range tree(pid) {
		f := statFields(p)
		if len(f) > 14 {
			u, _ := strconv.ParseFloat(f[13], 64)
			s, _ := strconv.ParseFloat(f[14], 64)
			total += (u + s) / clkTck
		}
	}
	return total
}

// treeRSS is the resident memory in bytes of pid and its descendants.
func treeRSS(pid int) int64 { return sumStatus(tree(pid), "VmRSS:") }

// sumStatus sums a kB field of /proc/PID/status ("VmRSS:", "VmHWM:")
// over pids, in bytes.
func sumStatus(pids []int, field string) int64 { return statusTotal(pids, field) << 10 }

// statusTotal sums a numeric field of /proc/PID/status over pids, in the
// field's own unit.
func statusTotal(pids []int, field string) int64 {
	var total int64
	for _, p := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, field) {
				v, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
				total += v
			}
		}
	}
	return total
}

// statFields splits /proc/PID/stat after the command name.
func statFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	// Fields after ')' start at field 3 (state); pad so indexes match
	// proc(5)'s 1-based numbering minus one.
	return append([]string{"pid", "comm"}, strings.Fields(s[i+1:])...)
}

// tree returns pid and every process descended from it.
func tree(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := statFields(p)
		if len(f) > 3 {
			pp, _ := strconv.Atoi(f[3])
			children[pp] = append(children[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// threads is the number of threads of pid and its descendants.
func threads(pid int) int {
	return int(statusTotal(tree(pid), "Threads:"))
}

// measureQuiet measures scenario s of contender c, and again, after
// waiting for the machine to quiet down, when other processes used more
// than -max-noise % of a core (up to 3 times more), or when it failed
// (twice more; each failure is noted in the report, since a failure on a
// quiet machine is the proxy's).
func (e *env) measureQuiet(c *contender, s string, round int) (measurement, error) {
	var m measurement
	var err error
	runs, failures := 0, 0
	for {
		m, err = e.measure(c, s)
		runs++
		if errors.Is(err, errSkip) || errors.Is(err, errStopping) {
			return m, err
		}
		if err != nil {
			first, _, _ := strings.Cut(err.Error(), "\n")
			e.notes = append(e.notes, fmt.Sprintf("%s %s, round %d, failed once: %s", c.name, s, round, first))
			failures++
			if failures > 2 {
				return m, err
			}
			logf("  %s %s: %s; waiting for quiet, then again", c.name, s, first)
		} else {
			m.Runs = runs
			m.Noisy = m.noisy(e.o.maxNoise)
			if !m.Noisy || runs-failures > 3 {
				return m, nil
			}
			logf("  %s %s: others used %.1f%% of the proxy's core and %.1f%% of the load core; waiting for quiet, then again", c.name, s, m.noise, m.NoiseLoad)
		}
		e.waitQuiet()
	}
}

// noisy reports whether other processes used more than max % of either
// core during m.
func (m measurement) noisy(max float64) bool { return m.noise > max || m.NoiseLoad > max }

// waitQuiet waits, up to -quiet-wait, until other processes leave the
// two cores alone: a 5-second spell in which they used no more than
// -max-noise % of each (between runs only lbbench's idle backends are
// left, and the CPU of lbbench and its children is not counted).
func (e *env) waitQuiet() {
	deadline := time.Now().Add(e.o.quietWait)
	logged := false
	for {
		before, own0 := coreTimes(), ownCPU()
		time.Sleep(5 * time.Second)
		after, own1 := coreTimes(), ownCPU()
		p := after[e.o.proxyCPU].sub(before[e.o.proxyCPU])
		l := after[e.o.loadCPU].sub(before[e.o.loadCPU])
		if p.total <= 0 || l.total <= 0 {
			return
		}
		// lbbench's own time is on the load core, where it runs.
		onProxy := p.busy / p.total * 100
		onLoad := max(0, l.busy-(own1-own0)) / l.total * 100
		if onProxy <= e.o.maxNoise && onLoad <= e.o.maxNoise {
			if logged {
				logf("quiet again")
			}
			return
		}
		if time.Now().After(deadline) {
			logf("others still use %.0f%% of the proxy's core and %.0f%% of the load core after %s; going on", onProxy, onLoad, e.o.quietWait)
			return
		}
		if !logged {
			logf("others use %.0f%% of the proxy's core and %.0f%% of the load core; waiting for quiet (up to %s)", onProxy, onLoad, e.o.quietWait)
			logged = true
		}
	}
}
