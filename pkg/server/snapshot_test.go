package server

import (
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/pkg/metrics"
)

const routesConfig = `
[global]
admin = ""
access_log = ""

[[listener]]
name = "web"
bind = "127.0.0.1:0"
pool = "a"
  [[listener.route]]
  host = "API.Example.com"
  pool = "b"
  [[listener.route]]
  path_prefix = "/v2/"
  pool = "b"
  [[listener.route]]
  host = "*.Example.COM"
  pool = "a"

[[listener]]
name = "passthrough"
bind = "127.0.0.1:0"
mode = "tcp"
  [[listener.route]]
  sni = "DB.example.com"
  pool = "b"
  [[listener.route]]
  sni = "*.example.com"
  pool = "b"

[[pool]]
name = "a"
  [[pool.backend]]
  address = "127.0.0.1:1"

[[pool]]
name = "b"
  [[pool.backend]]
  address = "127.0.0.1:2"
  [[pool.backend]]
  address = "127.0.0.1:3"
`

// TestHandlerStateResolvesEachPoolOnce: the routes of a listener that
// name one pool share its target, and so its counters, whichever mode the
// listener is in; names are matched in lower case; every counter the
// handler states use is kept by the commit.
func TestHandlerStateResolvesEachPoolOnce(t *testing.T) {
	s := &Server{log: hclog.NewNullLogger(), listeners: map[string]*boundListener{}, stop: make(chan struct{})}
	s.metrics = metrics.New(s)
	p, err := s.prepare(parseConfig(t, routesConfig))
	if err != nil {
		t.Fatal(err)
	}
	defer p.abandon(s)

	web, pass := p.listeners[0], p.listeners[1]
	if web.http == nil || web.tcp != nil || pass.tcp == nil || pass.http != nil {
		t.Fatalf("http listener: %v, %v; tcp listener: %v, %v", web.http, web.tcp, pass.http, pass.tcp)
	}
	h := web.http
	if len(h.Rules) != 3 || h.Default == nil {
		t.Fatalf("%d rules, default %v", len(h.Rules), h.Default)
	}
	if h.Rules[0].Dest != h.Rules[1].Dest || h.Rules[2].Dest != h.Default || h.Rules[0].Dest == h.Default {
		t.Error("http rules for one pool do not share its Dest")
	}
	if h.Rules[0].Host != "api.example.com" || h.Rules[2].Host != "*.example.com" || h.Rules[1].PathPrefix != "/v2/" {
		t.Errorf("rules %+v", h.Rules)
	}
	if len(h.Rules[0].Dest.Codes) != 2 || len(h.Default.Codes) != 1 || h.Rejected == nil || h.Default.NoBackend == nil {
		t.Error("http counters missing")
	}
	if h.Access != nil {
		t.Error("access log set with access_log off")
	}

	tcp := pass.tcp
	if tcp.Default != nil || len(tcp.Rules) != 2 || tcp.Rules[0].Upstream != tcp.Rules[1].Upstream {
		t.Fatalf("tcp default %v, rules %+v", tcp.Default, tcp.Rules)
	}
	if tcp.Rules[0].Pattern != "db.example.com" || len(tcp.Rules[0].Upstream.Stats) != 2 || tcp.Unrouted == nil {
		t.Errorf("tcp rules %+v", tcp.Rules)
	}

	for _, k := range []metrics.Key{
		{Listener: "web"},
		{Listener: "web", Pool: "a"},
		{Listener: "web", Pool: "a", Backend: "127.0.0.1:1"},
		{Listener: "web", Pool: "b"},
		{Listener: "web", Pool: "b", Backend: "127.0.0.1:2"},
		{Listener: "web", Pool: "b", Backend: "127.0.0.1:3"},
		{Listener: "passthrough"},
		{Listener: "passthrough", Pool: "b", Backend: "127.0.0.1:2"},
		{Listener: "passthrough", Pool: "b", Backend: "127.0.0.1:3"},
	} {
		if !p.keep[k] {
			t.Errorf("counter %+v not kept", k)
		}
	}
	if len(p.keep) != 9 {
		t.Errorf("%d counters kept, want 9: %v", len(p.keep), p.keep)
	}
}
