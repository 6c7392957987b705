package server

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestShutdownTwice: a second Shutdown, after the first or beside it,
// neither panics nor returns before the server has stopped.
func TestShutdownTwice(t *testing.T) {
	for _, concurrent := range []bool{false, true} {
		s, err := New(parseConfig(t, holdDownConfig), hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		addr := s.Addrs()["web"]
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var wg sync.WaitGroup
		errs := make([]any, 3)
		for i := range errs {
			call := func() {
				defer func() {
					if r := recover(); r != nil {
						errs[i] = r
					}
				}()
				if err := s.Shutdown(ctx); err != nil {
					errs[i] = err
				}
				// Whichever call returns, the server has stopped.
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					c.Close()
					errs[i] = "listener still accepting after Shutdown returned"
				}
			}
			if concurrent {
				wg.Add(1)
				go func() { defer wg.Done(); call() }()
			} else {
				call()
			}
		}
		wg.Wait()
		cancel()
		for i, e := range errs {
			if e != nil {
				t.Errorf("concurrent %v: Shutdown call %d: %v", concurrent, i+1, e)
			}
		}
	}
}
