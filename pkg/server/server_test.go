package server

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/config"
)

func TestNewReportsABusyPortAndReleasesWhatItBuilt(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	src := `
[global]
admin = "127.0.0.1:0"
access_log = ""
[[listener]]
name = "first"
bind = "127.0.0.1:0"
pool = "web"
[[listener]]
name = "second"
bind = "` + busy.Addr().String() + `"
pool = "web"
[[pool]]
name = "web"
  [[pool.backend]]
  address = "127.0.0.1:1"
`
	cfg, err := config.Parse([]byte(src), "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(cfg, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), `listener "second"`) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("New with a busy port: %v", err)
	}

	// With the busy port freed, the same config starts and stops cleanly.
	busy.Close()
	s, err := New(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing was in flight, so nothing should have been waited for.
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutting down an idle server took %s", d)
	}
}
