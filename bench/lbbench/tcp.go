package main

import (
	"encoding/json"
	"flag"
	"io"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// tcpResult is what tcp-client prints.
type tcpResult struct {
	Bytes     int64  `json:"bytes"`
	Conns     int64  `json:"conns"`
	Errors    int64  `json:"errors"`
	LastError string `json:"last_error"`
}

// tcpSink is the tcp scenarios' backend: a connection whose first byte is
// 'E' gets one byte back and is closed (connrate); any other is read and
// discarded to its end (throughput).
func tcpSink(args []string) int {
	fs := flag.NewFlagSet("tcp-sink", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "address")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0
		}
		go func() {
			defer c.Close()
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if b[0] == 'E' {
				c.Write(b[:])
				return
			}
			io.Copy(io.Discard, c)
		}()
	}
}

// tcpClient drives the tcp scenarios and prints a JSON tcpResult.
func tcpClient(args []string) int {
	fs := flag.NewFlagSet("tcp-client", flag.ExitOnError)
	mode := fs.String("mode", "throughput", "throughput | connrate")
	addr := fs.String("addr", "", "address")
	conc := fs.Int("c", 4, "concurrent connections")
	d := fs.Duration("d", 10*time.Second, "duration")
	fs.Parse(args)
	var bytes, conns atomic.Int64
	var errs errorTally
	stop := time.Now().Add(*d)
	runWorkers(*conc, func() {
		if *mode == "throughput" {
			c, err := net.Dial("tcp", *addr)
			if err != nil {
				errs.add(err)
				return
			}
			defer c.Close()
			buf := make([]byte, 64<<10)
			buf[0] = 'S'
			for time.Now().Before(stop) {
				n, err := c.Write(buf)
				bytes.Add(int64(n))
				if err != nil {
					errs.add(err)
					return
				}
			}
			conns.Add(1)
			return
		}
		var b [1]byte
		for time.Now().Before(stop) {
			c, err := net.Dial("tcp", *addr)
			if err == nil {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Write([]byte{'E'})
				if err == nil {
					_, err = io.ReadFull(c, b[:])
				}
				c.Close()
			}
			if err != nil {
				errs.add(err)
				continue
			}
			conns.Add(1)
		}
	})
	r := tcpResult{Bytes: bytes.Load(), Conns: conns.Load(), Errors: errs.count(), LastError: errs.lastText()}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}
