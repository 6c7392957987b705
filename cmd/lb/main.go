// Command lb is an SSL-offloading layer-4/7 load balancer.
//
//	lb -config lb.toml           run (default: ./lb.toml, or $LB_CONFIG)
//	lb -check -config lb.toml    validate only: exit 0, or print every error and exit 1
//	lb -demo                     self-contained demo on https://127.0.0.1:8443
//	lb -version                  version, commit, Go version
//	lb -healthcheck              exit 0 if the admin /healthz of the configured lb answers
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/offloadlb/lb/internal/version"
	"github.com/offloadlb/lb/internal/watch"
	"github.com/offloadlb/lb/pkg/config"
	"github.com/offloadlb/lb/pkg/server"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lb", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", defaultConfig(), "config file (default ./lb.toml, or $LB_CONFIG)")
	check := fs.Bool("check", false, "validate the config and exit: 0 if good, 1 with every error printed")
	demo := fs.Bool("demo", false, "run a self-contained demo: three local backends behind https://127.0.0.1:8443")
	demoListen := fs.String("demo-listen", "127.0.0.1:8443", "HTTPS address of the demo")
	demoAdmin := fs.String("demo-admin", "127.0.0.1:9100", "admin address of the demo")
	showVersion := fs.Bool("version", false, "print version information and exit")
	healthcheck := fs.Bool("healthcheck", false, "exit 0 if the admin /healthz of the configured lb answers (for container health checks)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "lb: an SSL-offloading layer-4/7 load balancer\n\nUsage:\n")
		fmt.Fprintf(stderr, "  lb -config lb.toml          run\n  lb -check -config lb.toml   validate only\n")
		fmt.Fprintf(stderr, "  lb -demo                    try it: three local backends behind https://127.0.0.1:8443\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lb: unexpected argument %q (flags start with -)\n", fs.Arg(0))
		return 2
	}

	switch {
	case *showVersion:
		fmt.Fprintln(stdout, version.String())
		return 0
	case *demo:
		smallStacks()
		return runDemo(*demoListen, *demoAdmin, stdout, stderr)
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		printConfigErrors(stderr, err)
		return 1
	}
	switch {
	case *check:
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		nb := 0
		for _, p := range cfg.Pools {
			nb += len(p.Backends)
		}
		fmt.Fprintf(stdout, "%s: ok (%s, %s, %s)\n", *configPath,
			plural(len(cfg.Listeners), "listener"), plural(len(cfg.Pools), "pool"), plural(nb, "backend"))
		return 0
	case *healthcheck:
		return runHealthcheck(cfg, stderr)
	}
	smallStacks()
	log := newLogger(cfg.Global, stderr)
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	return serve(cfg, *configPath, log, nil)
}

// smallStacks makes sure the Go runtime starts every goroutine with the
// smallest stack (GODEBUG=adaptivestackstart=0), re-executing lb with that
// setting if it is not in the environment; the setting is read only when
// a process starts. By default new goroutines start at the average stack
// size seen at the last collection, which the few handshake workers (tens
// of KiB each) pull up to 8 KiB; a connection's goroutine keeps that size
// while idle, where 4 KiB is all the request path needs (pkg/server's
// TestIdleConnectionStack holds it to that). Half the stack of an idle
// connection is a third of what lb holds for it.
func smallStacks() {
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, "adaptivestackstart=") {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	if godebug != "" {
		godebug += ","
	}
	// Replace GODEBUG rather than add a second one: which of two the
	// runtime reads is not the one os.Getenv sees, and lb would re-execute
	// itself forever.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") })
	env = append(env, "GODEBUG="+godebug+"adaptivestackstart=0")
	_ = syscall.Exec(exe, os.Args, env) // returns only if it failed; run as we are
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func defaultConfig() string {
	if p := os.Getenv("LB_CONFIG"); p != "" {
		return p
	}
	return config.DefaultConfigFile
}

func printConfigErrors(w io.Writer, err error) {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, e := range errs {
			fmt.Fprintf(w, "error: %s\n", e)
		}
		if len(errs) > 1 {
			fmt.Fprintf(w, "%d errors\n", len(errs))
		}
		return
	}
	fmt.Fprintf(w, "error: %v\n", err)
}

func newLogger(g config.Global, out io.Writer) hclog.InterceptLogger {
	return hclog.NewInterceptLogger(&hclog.LoggerOptions{
		Name:       "lb",
		Level:      hclog.LevelFromString(g.LogLevel),
		JSONFormat: g.LogFormat == "json",
		Output:     out,
	})
}

// serve runs cfg until SIGTERM or SIGINT, then shuts down gracefully.
// path is the config file to reload from on SIGHUP, POST /reload and,
// with global.watch, when it changes; "" when the config did not come
// from a file. started, if not nil, is called once everything listens.
func serve(cfg *config.Config, path string, log hclog.InterceptLogger, started func(*server.Server)) int {
	srv, err := server.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "error", err)
		return 1
	}
	r := &reloader{path: path, srv: srv, log: log, cfg: cfg}
	srv.Reloader = func() error { return r.reload("admin API") }
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	srv.Start()
	log.Info("lb started", "version", version.String(), "config", path)
	r.mu.Lock()
	r.setWatch(cfg.Global.Watch)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.setWatch(false)
		r.mu.Unlock()
	}()
	if started != nil {
		started(srv)
	}

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			_ = r.reload("SIGHUP") // it logs its own failure
			continue
		}
		r.mu.Lock()
		r.setWatch(false)
		grace := r.cfg.Global.ShutdownGrace.Duration
		r.mu.Unlock()
		log.Info("shutting down: no new connections, waiting for requests in flight", "signal", sig.String(), "grace", grace.String())
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		go func() {
			// A second signal stops at once.
			select {
			case s := <-sigs:
				log.Warn("second signal: stopping now", "signal", s.String())
				cancel()
			case <-sctx.Done():
			}
		}()
		err := srv.Shutdown(sctx)
		cancel()
		if err != nil {
			log.Warn("stopped with requests still in flight", "error", err)
		} else {
			log.Info("stopped")
		}
		return 0
	}
	return 0
}

// reloader reloads the config file into the server, one reload at a time.
type reloader struct {
	path string
	srv  *server.Server
	log  hclog.InterceptLogger

	mu       sync.Mutex
	cfg      *config.Config     // the config in use
	watching context.CancelFunc // stops watching the config file; nil when not watching
	watched  []string           // the files watched: the config and the files it names that reload with it
}

// setWatch starts or stops watching the config file (global.watch), and
// the files it names that reload with it (basic_auth's htpasswd files).
// Callers hold mu.
func (r *reloader) setWatch(on bool) {
	files := append([]string{r.path}, r.cfg.AuthFiles()...)
	if on && r.watching != nil && !slices.Equal(files, r.watched) {
		r.watching() // the set changed: watch the new one
		r.watching = nil
	}
	switch {
	case r.path == "" || on == (r.watching != nil):
		return
	case !on:
		r.watching()
		r.watching = nil
		r.log.Info("no longer watching the config file", "file", r.path)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	opts := watch.Options{Debounce: 250 * time.Millisecond, Poll: 5 * time.Second, What: "the config file"}
	if err := watch.Files(ctx, files, opts, r.log, func() { r.reload("file changed") }); err != nil {
		cancel()
		r.log.Warn("cannot watch the config file; reload with SIGHUP or POST /reload", "file", r.path, "error", err)
		return
	}
	r.watching, r.watched = cancel, files
	r.log.Info("watching the config file for changes", "file", r.path, "with", len(files)-1)
}

func (r *reloader) reload(why string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.path == "" {
		err := errors.New("this config was not read from a file, so there is nothing to reload")
		r.log.Warn("reload refused", "trigger", why, "error", err)
		return err
	}
	r.log.Info("reloading the config", "trigger", why, "file", r.path)
	cfg, err := config.Load(r.path)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				r.log.Error("reload failed: bad config; the running config keeps serving", "error", e.Error())
			}
		} else {
			r.log.Error("reload failed: bad config; the running config keeps serving", "error", err)
		}
		r.srv.NoteReloadFailure(err)
		return err
	}
	for _, w := range cfg.Warnings {
		r.log.Warn(w)
	}
	if err := r.srv.Reload(cfg); err != nil {
		r.log.Error("reload failed; the running config keeps serving", "error", err)
		return err
	}
	if cfg.Global.LogFormat != r.cfg.Global.LogFormat {
		r.log.Warn("global.log_format takes effect when lb restarts; the log keeps its format until then",
			"running", r.cfg.Global.LogFormat, "configured", cfg.Global.LogFormat)
	}
	r.cfg = cfg
	r.log.SetLevel(hclog.LevelFromString(cfg.Global.LogLevel))
	r.setWatch(cfg.Global.Watch)
	return nil
}

// runHealthcheck asks the admin /healthz of the lb that cfg configures.
func runHealthcheck(cfg *config.Config, stderr io.Writer) int {
	addr := cfg.Global.Admin
	if addr == "" {
		fmt.Fprintln(stderr, "lb -healthcheck: global.admin is off in the config, so there is nothing to ask")
		return 1
	}
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		fmt.Fprintf(stderr, "lb -healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "lb -healthcheck: /healthz answered %s\n", resp.Status)
		return 1
	}
	return 0
}
