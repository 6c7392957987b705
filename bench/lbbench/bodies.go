package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The uploads and downloads scenarios: many large bodies in flight at
// once through a proxy whose far side is slow (a backend reading
// uploads slowly, clients reading downloads slowly), so that the proxy
// must either hold the bodies or push back. What they measure is the
// proxy's memory.

// bodyMeasure is the outcome of one uploads or downloads run.
type bodyMeasure struct {
	bodyResult
	BaseRSS   int64   `json:"base_rss"` // the proxy's RSS before the load, bytes
	PeakRSS   int64   `json:"peak_rss"` // the highest sampled RSS, bytes
	HWM       int64   `json:"hwm"`      // VmHWM summed over the processes at the end, bytes (0 if stopped)
	TCPMem    int64   `json:"tcp_mem"`  // growth of the kernel's TCP buffers, every socket, at their peak, bytes
	Disk      int64   `json:"disk"`     // growth of the used space of the work folder's file system at its peak, bytes
	Samples   int     `json:"samples"`
	Stopped   string  `json:"stopped,omitempty"` // why the bench stopped the proxy early, if it did
	ElapsedS  float64 `json:"elapsed_s"`
	PerConnKB float64 `json:"per_conn_kb"` // (PeakRSS-BaseRSS)/N
}

func wantsBodies(scenarios []string) bool {
	return contains(scenarios, "uploads") || contains(scenarios, "downloads")
}

// bodies runs the uploads or downloads scenario against the contender
// whose process is pid and whose body listener is addr.
func (e *env) bodies(c *contender, pid int, addr, scenario string) (measurement, error) {
	if err := waitHTTP(addr, true); err != nil {
		return measurement{}, fmt.Errorf("%s body listener did not come up: %w", c.name, err)
	}
	time.Sleep(500 * time.Millisecond)
	o := e.o
	args := []string{"-c", o.loadCPU, e.self}
	var n int
	if scenario == "uploads" {
		n = o.uploads
		args = append(args, "upload-client", "-n", strconv.Itoa(n), "-size", formatSize(o.uploadSize),
			"-chunked="+strconv.FormatBool(o.uploadChunked))
	} else {
		n = o.downloads
		args = append(args, "download-client", "-n", strconv.Itoa(n), "-size", formatSize(o.downloadSize),
			"-rate", formatSize(o.downloadRate))
	}
	args = append(args, "-addr", addr, "-timeout", o.bodyTimeout.String(),
		"-check-every", strconv.Itoa(o.checkEvery), "-sockbuf", formatSize(o.sockbuf))
	cmd := exec.Command("taskset", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr

	w := newMemWatch(pid, o, e.work)
	start := time.Now()
	if stopping.Load() {
		return measurement{}, errStopping
	}
	if err := cmd.Start(); err != nil {
		return measurement{}, err
	}
	w.onStop = func() { cmd.Process.Kill() }
	go w.run()
	// The client bounds itself by -timeout; this bounds it if it hangs.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-time.After(o.bodyTimeout + time.Minute):
		cmd.Process.Kill()
		werr = fmt.Errorf("client did not end within %s", o.bodyTimeout+time.Minute)
		<-done
	}
	w.stop()
	m := &bodyMeasure{BaseRSS: w.baseRSS, PeakRSS: w.peakRSS, TCPMem: w.peakTCP - w.baseTCP,
		Disk: w.peakDisk - w.baseDisk, Samples: w.samples, Stopped: w.reason, ElapsedS: time.Since(start).Seconds()}
	if m.Stopped == "" {
		m.HWM = treeStatus(pid, "VmHWM:")
	}
	if werr != nil && m.Stopped == "" {
		return measurement{}, fmt.Errorf("%s client: %v\n%s", scenario, werr, out.String())
	}
	if err := jsonLast(out.String(), &m.bodyResult); err != nil && m.Stopped == "" {
		return measurement{}, fmt.Errorf("%s client output: %v\n%s", scenario, err, out.String())
	}
	if m.N == 0 {
		// The client was stopped before it could print.
		m.N = n
		m.Failed = int64(n) - m.Completed
	}
	m.PerConnKB = float64(m.PeakRSS-m.BaseRSS) / 1024 / float64(n)
	return measurement{Body: m}, nil
}

// memWatch samples a proxy's memory every 100 ms while a body scenario
// runs, and stops the proxy (and the load, through onStop) if its RSS
// passes -rss-cap, or the machine's free memory or the work folder's
// free disk space run low: a proxy that holds every body could
// otherwise take the machine down.
type memWatch struct {
	pid                int
	o                  options
	dir                string
	onStop             func()
	baseRSS, peakRSS   int64
	baseTCP, peakTCP   int64
	baseDisk, peakDisk int64
	samples            int
	reason             string
	quit               chan struct{}
	wg                 sync.WaitGroup
	pids               []int
	startedAt          time.Time
}

func newMemWatch(pid int, o options, dir string) *memWatch {
	w := &memWatch{pid: pid, o: o, dir: dir, quit: make(chan struct{}), pids: tree(pid), startedAt: time.Now()}
	w.baseRSS = sumStatus(w.pids, "VmRSS:")
	w.peakRSS = w.baseRSS
	w.baseTCP = tcpMem()
	w.peakTCP = w.baseTCP
	w.baseDisk, _ = diskUse(dir)
	w.peakDisk = w.baseDisk
	w.wg.Add(1)
	return w
}

func (w *memWatch) run() {
	defer w.wg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-w.quit:
			return
		case <-tick.C:
		}
		if n%20 == 0 {
			// NGINX may replace a worker; find the tree again now and then.
			w.pids = tree(w.pid)
		}
		rss := sumStatus(w.pids, "VmRSS:")
		w.peakRSS = max(w.peakRSS, rss)
		w.peakTCP = max(w.peakTCP, tcpMem())
		used, free := diskUse(w.dir)
		w.peakDisk = max(w.peakDisk, used)
		w.samples++
		after := time.Since(w.startedAt).Seconds()
		switch {
		case rss > w.o.rssCap:
			w.reason = fmt.Sprintf("RSS passed -rss-cap %s after %.0f s", formatSize(w.o.rssCap), after)
		case memAvailable() < 1<<30:
			w.reason = fmt.Sprintf("the machine had less than 1 GiB of memory available after %.0f s", after)
		case free < w.o.minFreeDisk:
			w.reason = fmt.Sprintf("free disk space fell below -min-free-disk %s after %.0f s", formatSize(w.o.minFreeDisk), after)
		default:
			continue
		}
		logf("  stopping the proxy: %s", w.reason)
		for _, p := range w.pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		w.onStop()
		return
	}
}

func (w *memWatch) stop() {
	close(w.quit)
	w.wg.Wait()
}

// treeStatus sums a kB field of /proc/PID/status over pid and its
// descendants, in bytes.
func treeStatus(pid int, field string) int64 { return sumStatus(tree(pid), field) }

// tcpMem is the memory of every TCP socket's buffers on the machine, in
// bytes, from /proc/net/sockstat ("TCP: ... mem PAGES").
func tcpMem() int64 {
	data, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				pages, _ := strconv.ParseInt(f[i+1], 10, 64)
				return pages * int64(os.Getpagesize())
			}
		}
	}
	return 0
}

// diskUse is the used and available space of the file system holding
// dir, in bytes.
func diskUse(dir string) (used, free int64) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 1 << 62
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize, int64(st.Bavail) * st.Bsize
}

// memAvailable is MemAvailable from /proc/meminfo, in bytes.
func memAvailable() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 1 << 62
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "MemAvailable:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 1 << 62
}
