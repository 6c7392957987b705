package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// What a run reads of the proxy from /proc: its CPU time and memory,
// summed over its process tree, and the busy time of its core.

// cpuSample is a proxy's CPU time and the busy time of its core.
type cpuSample struct {
	at        time.Time
	proxy     float64 // seconds of CPU, the whole process tree
	coreBusy  float64 // seconds the proxy's core was busy
	coreTotal float64
}

func sample(pid int, core string) cpuSample {
	busy, total := coreTimes(core)
	return cpuSample{at: time.Now(), proxy: treeCPU(pid), coreBusy: busy, coreTotal: total}
}

func cpuMeasurement(before, after cpuSample, count float64) measurement {
	wall := after.at.Sub(before.at).Seconds()
	cpu := after.proxy - before.proxy
	busy := after.coreBusy - before.coreBusy
	m := measurement{Count: count, Rate: count / wall, ProxyCore: cpu / wall}
	if count > 0 {
		m.CPUPer = cpu / count * 1e6
	}
	if total := after.coreTotal - before.coreTotal; total > 0 {
		m.noise = max(0, (busy-cpu)/total*100)
	}
	m.Noise = m.noise
	return m
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

// coreTimes reads busy and total time of one core from /proc/stat.
func coreTimes(core string) (busy, total float64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[0] != "cpu"+core {
			continue
		}
		var v [8]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(fields[i+1], 64)
		}
		idle := v[3] + v[4]
		for _, x := range v {
			total += x
		}
		return (total - idle) / clkTck, total / clkTck
	}
	return 0, 0
}

// threads is the number of threads of pid and its descendants.
func threads(pid int) int {
	return int(statusTotal(tree(pid), "Threads:"))
}
