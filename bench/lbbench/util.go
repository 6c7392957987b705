package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitHTTP waits until addr answers a GET (over TLS when tlsOn).
func waitHTTP(addr string, tlsOn bool) error {
	deadline := time.Now().Add(15 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		var c net.Conn
		c, last = net.DialTimeout("tcp", addr, time.Second)
		if last == nil {
			if tlsOn {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
				last = tc.Handshake()
				c = tc
			}
			if last == nil {
				c.SetDeadline(time.Now().Add(2 * time.Second))
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil && strings.Contains(line, " 200 ") {
					c.Close()
					return nil
				}
				last = fmt.Errorf("answer %q: %v", line, err)
			}
			c.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

func stopProc(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func output(name string, args ...string) string {
	out, _ := outputErr(name, args...)
	return out
}

func outputErr(name string, args ...string) (string, error) {
	if stopping.Load() {
		return "", errStopping
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(l)
}

// wrkResult is what the report needs from wrk's output.
type wrkResult struct {
	requests float64
	p99      float64 // ms
	errors   int
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "99%":
			r.p99 = parseLatency(f[1])
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			r.requests, _ = strconv.ParseFloat(f[0], 64)
		case strings.Contains(line, "Non-2xx or 3xx responses:"):
			n, _ := strconv.Atoi(f[len(f)-1])
			r.errors += n
		case strings.HasPrefix(strings.TrimSpace(line), "Socket errors:"):
			for i := 2; i+1 < len(f); i += 2 {
				n, _ := strconv.Atoi(strings.TrimSuffix(f[i+1], ","))
				r.errors += n
			}
		}
	}
	if r.requests == 0 {
		return r, errors.New("could not read wrk's output:\n" + out)
	}
	return r, nil
}

// parseLatency reads wrk's "1.23ms" / "456.00us" / "1.02s" as milliseconds.
func parseLatency(s string) float64 {
	for _, u := range []struct {
		suffix string
		ms     float64
	}{{"us", 0.001}, {"ms", 1}, {"s", 1000}} {
		if strings.HasSuffix(s, u.suffix) {
			v, _ := strconv.ParseFloat(strings.TrimSuffix(s, u.suffix), 64)
			return v * u.ms
		}
	}
	return 0
}

func jsonLast(out string, v any) error {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return jsonUnmarshal([]byte(lines[len(lines)-1]), v)
}

// tlsProbe connects to addr with openssl s_client, an OpenSSL 3.0 client
// like wrk and h2load with their default offer, and returns what was
// negotiated: "TLSv1.3 TLS_AES_128_GCM_SHA256 X25519"; "" without
// openssl.
func (e *env) tlsProbe(addr string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "taskset", "-c", e.o.loadCPU, "openssl", "s_client",
		"-connect", addr, "-servername", "localhost", "-brief")
	out, _ := cmd.CombinedOutput()
	var parts []string
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Protocol version", "Ciphersuite":
			parts = append(parts, strings.TrimSpace(v))
		case "Server Temp Key":
			g, _, _ := strings.Cut(strings.TrimSpace(v), ",")
			parts = append(parts, g)
		}
	}
	return strings.Join(parts, " ")
}

// countLines counts the lines of a file, -1 if it cannot be read.
func countLines(path string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	var n int64
	buf := make([]byte, 1<<20)
	for {
		m, err := f.Read(buf)
		n += int64(bytes.Count(buf[:m], []byte{'\n'}))
		if err != nil {
			return n
		}
	}
}
