package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// artifactDir is where tests leave files for people to look at: $LB_ARTIFACTS,
// or artifacts/ at the top of the repository.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("LB_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	return abs
}

func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium installed; .ci/run installs Debian's chromium (apt-get install chromium)")
	return ""
}

// newBrowser starts headless Chromium (its profile under dir) for the
// test, which ends it; what is done in the returned context must finish
// within a minute.
func newBrowser(t *testing.T, chrome, dir string) context.Context {
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.NoSandbox,
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1300, 760),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

// TestStatusPageShowsACME: a listener whose ACME CA cannot be reached
// shows its name failing, with the error, on the status page, beside the
// backends.
func TestStatusPageShowsACME(t *testing.T) {
	chrome := findChromium(t)
	dir := t.TempDir()
	writeCerts(t, dir)
	b := startBackend(t, "a")
	lb := startLB(t, dir, unreachableACME(t, b))
	lb.waitACME("https", "www.example.com", "failing", 30*time.Second)
	ctx := newBrowser(t, chrome, dir)
	if _, err := chromedp.Run(ctx, chromedp.Navigate("http://"+lb.admin+"/status")); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}
	js := `(function(){const c=document.getElementById("acme-card");const r=document.querySelector("#acme tr");` +
		`const b=document.querySelector("tr[data-backend]");return (c&&!c.hidden?"shown":"hidden")+"|"+(r?r.textContent:"")+"|"+(b?b.dataset.state:"")})()`
	var got string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("reading the page: %v", err)
		}
		if got = s; strings.HasPrefix(got, "shown|") && strings.Contains(got, "www.example.com") &&
			strings.Contains(got, "failing") && strings.HasSuffix(got, "|up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page shows %q, want the ACME card with www.example.com failing, and the backend up", got)
		}
	}
}

// TestStatusPageShowsABackendGoingDown loads the status page in headless
// Chromium, stops a backend, and waits for the page to show it down.
func TestStatusPageShowsABackendGoingDown(t *testing.T) {
	chrome := findChromium(t)
	dir := t.TempDir()
	writeCerts(t, dir)
	b1, b2, b3 := startBackend(t, "b1"), startBackend(t, "b2"), startBackend(t, "b3")
	bind := freePort(t)
	lb := startLB(t, dir, reloadConfig(bind, false, "", weighted{b1, 2}, weighted{b2, 1}, weighted{b3, 1}))

	// Some traffic, so the page has rates and a chart to draw.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		c := &keepAliveClient{addr: bind, pool: insecureTLS()}
		defer c.close()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				_, _ = c.get("/page") // traffic for the page to chart; a failed request is part of it
			}
		}
	}()

	ctx := newBrowser(t, chrome, dir)

	stateOf := func(addr string) string {
		js := fmt.Sprintf(`(function(){const r=document.querySelector('tr[data-backend=%q]');return r?r.dataset.state+"|"+r.querySelector(".state").textContent:""})()`, addr)
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("reading the page: %v", err)
		}
		return s
	}
	waitFor := func(addr, want string) {
		deadline := time.Now().Add(15 * time.Second)
		for {
			got := stateOf(addr)
			if strings.HasPrefix(got, want+"|") && strings.HasSuffix(got, "|"+want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page shows %s as %q, want %q", addr, got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	if _, err := chromedp.Run(ctx, chromedp.Navigate("http://"+lb.admin+"/status")); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}
	for _, b := range []*backend{b1, b2, b3} {
		waitFor(b.addr, "up")
	}
	time.Sleep(2 * time.Second) // a few samples for the charts
	b2.stop()
	waitFor(b2.addr, "down")
	waitFor(b1.addr, "up")
	time.Sleep(1500 * time.Millisecond)

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(artifactDir(t), "status-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the status page with %s down: %s", b2.addr, path)
}

// TestStatusPageAsksForTheToken: with global.admin_token set, the status
// page's drain button asks for the token once, sends it, and keeps it for
// the next action; a wrong token is not kept.
func TestStatusPageAsksForTheToken(t *testing.T) {
	chrome := findChromium(t)
	dir := t.TempDir()
	writeCerts(t, dir)
	b1, b2 := startBackend(t, "b1"), startBackend(t, "b2")
	bind := freePort(t)
	token := "browser-admin-token-" + strings.Repeat("q5", 10)
	cfg := strings.Replace(reloadConfig(bind, false, "", weighted{b1, 1}, weighted{b2, 1}),
		"[global]\n", "[global]\nadmin_token = \"env:LB_E2E_ADMIN_TOKEN\"\n", 1)
	lb := startLBEnv(t, dir, cfg, []string{"LB_E2E_ADMIN_TOKEN=" + token})

	ctx := newBrowser(t, chrome, dir)
	eval := func(js string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("evaluating %s: %v", js, err)
		}
		return s
	}
	waitState := func(addr, want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for lb.backendStatus("web", addr).State != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s is %q, want %q", addr, lb.backendStatus("web", addr).State, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if _, err := chromedp.Run(ctx, chromedp.Navigate("http://"+lb.admin+"/status")); err != nil {
		t.Fatalf("loading the status page: %v", err)
	}
	// The page's dialogs answered by the test: confirm says yes, prompt
	// gives the answer held in window.answer and counts its calls.
	eval(`window.prompts = 0; window.confirm = () => true;
		window.prompt = () => { window.prompts++; return window.answer; }; ""`)
	click := func(act, addr string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		js := fmt.Sprintf(`(function(){const b=document.querySelector('button[data-act=%q][data-addr=%q]');if(!b)return "";b.click();return "ok"})()`, act, addr)
		for eval(js) != "ok" {
			if time.Now().After(deadline) {
				t.Fatalf("no %s button for %s on the page", act, addr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	eval(`window.alert = (m) => { window.alerted = m; }; window.answer = "not-the-token-0123456789"; ""`)
	click("drain", b1.addr)
	deadline := time.Now().Add(10 * time.Second)
	for eval(`String(window.alerted || "")`) == "" {
		if time.Now().After(deadline) {
			t.Fatal("a wrong token brought no alert")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := lb.backendStatus("web", b1.addr).State; got != "up" {
		t.Fatalf("a wrong token drained %s (%s)", b1.addr, got)
	}
	if kept := eval(`String(sessionStorage.getItem("lb-admin-token") || "")`); kept != "" {
		t.Errorf("a wrong token was kept")
	}

	eval(fmt.Sprintf(`window.answer = %q; window.prompts = 0; ""`, token))
	click("drain", b1.addr)
	waitState(b1.addr, "drained")
	click("enable", b1.addr)
	waitState(b1.addr, "up")
	if n := eval(`String(window.prompts)`); n != "1" {
		t.Errorf("the token was asked for %s times for two actions, want once", n)
	}
}
