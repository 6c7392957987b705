package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// parseDockerfile parses ../Dockerfile as BuildKit does, failing the test
// on a syntax error, a parser warning or a lint warning.
func parseDockerfile(t *testing.T) (*parser.Result, []instructions.Stage) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile does not parse: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile parser warning: %s", w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		t.Errorf("Dockerfile:%d: lint %s: %s", line, rule, msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("Dockerfile instructions: %v", err)
	}
	return res, stages
}

// TestDockerfile checks what the image promises (docs/docker.md): a
// two-stage build of a static, trimmed, version-stamped binary into a
// final stage that runs as a non-root user with its config path, ports,
// health check and entrypoint set. The build itself is checked by
// scripts/docker-smoke.sh (TestDockerSmoke).
func TestDockerfile(t *testing.T) {
	res, stages := parseDockerfile(t)
	if len(stages) != 2 {
		t.Fatalf("Dockerfile has %d stages, want 2 (build and final)", len(stages))
	}
	build, final := stages[0], stages[1]

	// Build stage: a static binary, -trimpath, version and commit stamped.
	var buildRun string
	cgoEnv := false
	for _, c := range build.Commands {
		switch c := c.(type) {
		case *instructions.RunCommand:
			if line := strings.Join(c.CmdLine, " "); strings.Contains(line, "go build") {
				buildRun = line
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				if kv.Key == "CGO_ENABLED" && kv.Value == "0" {
					cgoEnv = true
				}
			}
		}
	}
	if buildRun == "" {
		t.Fatalf("build stage %q has no RUN ... go build", build.Name)
	}
	if !cgoEnv && !strings.Contains(buildRun, "CGO_ENABLED=0") {
		t.Errorf("build stage does not set CGO_ENABLED=0 (ENV, or on the go build line): %s", buildRun)
	}
	for _, want := range []string{
		"-trimpath",
		"-X github.com/offloadlb/lb/internal/version.Version=${VERSION}",
		"-X github.com/offloadlb/lb/internal/version.Commit=${COMMIT}",
		"./cmd/lb",
	} {
		if !strings.Contains(buildRun, want) {
			t.Errorf("go build line lacks %q: %s", want, buildRun)
		}
	}

	// Final stage.
	var (
		user, entrypoint string
		health           []string
		exposed          []string
		env              = map[string]string{}
		copiedBinary     bool
	)
	for _, c := range final.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.HealthCheckCommand:
			health = c.Health.Test
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				t.Errorf("ENTRYPOINT in shell form (%v): signals would go to /bin/sh, which the image lacks", c.CmdLine)
			}
			entrypoint = strings.Join(c.CmdLine, " ")
		case *instructions.ExposeCommand:
			for _, p := range c.Ports {
				exposed = append(exposed, strings.TrimSuffix(p, "/tcp"))
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				env[kv.Key] = kv.Value
			}
		case *instructions.CopyCommand:
			if c.From == build.Name && c.DestPath == "/usr/local/bin/lb" {
				copiedBinary = true
			}
		}
	}
	if !copiedBinary {
		t.Errorf("final stage does not COPY --from=%s the binary to /usr/local/bin/lb", build.Name)
	}
	switch name, _, _ := strings.Cut(user, ":"); name {
	case "":
		t.Errorf("final stage has no USER: it would run as its base image's user (%s)", final.BaseName)
	case "root", "0":
		t.Errorf("final stage runs as root (USER %s)", user)
	}
	if want := []string{"CMD", "/usr/local/bin/lb", "-healthcheck"}; !slices.Equal(health, want) {
		t.Errorf("HEALTHCHECK test is %q, want %q", health, want)
	}
	if entrypoint != "/usr/local/bin/lb" {
		t.Errorf("ENTRYPOINT is %q, want [\"/usr/local/bin/lb\"]", entrypoint)
	}
	for _, p := range []string{"8443", "8080", "9100"} {
		if !slices.Contains(exposed, p) {
			t.Errorf("EXPOSE lacks %s (has %v)", p, exposed)
		}
	}
	if got := env["LB_CONFIG"]; got != "/etc/lb/lb.toml" {
		t.Errorf("final stage ENV LB_CONFIG = %q, want /etc/lb/lb.toml", got)
	}

	// Syntax that BuildKit takes but buildah 1.28 does not: with no
	// Docker engine on the machine, scripts/docker-smoke.sh builds the
	// image with buildah.
	for _, n := range res.AST.Children {
		if len(n.Heredocs) > 0 {
			t.Errorf("Dockerfile:%d: heredoc (buildah 1.28 has none)", n.StartLine)
		}
	}
	for _, s := range stages {
		for _, c := range s.Commands {
			switch c := c.(type) {
			case *instructions.CopyCommand:
				if c.Link {
					t.Errorf("Dockerfile:%d: COPY --link (buildah 1.28 has none)", c.Location()[0].Start.Line)
				}
			case *instructions.RunCommand:
				if slices.Contains(c.FlagsUsed, "network") {
					t.Errorf("Dockerfile:%d: RUN --network (buildah 1.28 has none)", c.Location()[0].Start.Line)
				}
				// Mounts are parsed on expansion; the words as written will do.
				if err := c.Expand(func(w string) (string, error) { return w, nil }); err != nil {
					t.Errorf("Dockerfile:%d: %v", c.Location()[0].Start.Line, err)
				}
				for _, m := range instructions.GetMounts(c) {
					if !strings.HasPrefix(m.Target, "/") {
						t.Errorf("Dockerfile:%d: RUN --mount target %q is not absolute (buildah 1.28 needs it)", c.Location()[0].Start.Line, m.Target)
					}
				}
			}
		}
	}
}

// TestDockerSmoke builds the image and runs it: scripts/docker-smoke.sh,
// which needs root, apt-get (for buildah, podman, runc) and a minute or
// two, so only with LB_DOCKER_SMOKE=1. .ci/run runs the script itself.
func TestDockerSmoke(t *testing.T) {
	if os.Getenv("LB_DOCKER_SMOKE") != "1" {
		t.Skip("set LB_DOCKER_SMOKE=1 to build and run the Docker image (scripts/docker-smoke.sh; .ci/run runs it)")
	}
	deadline := time.Now().Add(15 * time.Minute)
	if d, ok := t.Deadline(); ok {
		deadline = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join("..", "scripts", "docker-smoke.sh"))
	// SIGTERM first, so the script's trap removes what it made.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	out, err := cmd.CombinedOutput()
	t.Logf("scripts/docker-smoke.sh:\n%s", out)
	if err != nil {
		t.Fatalf("scripts/docker-smoke.sh: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "docker-smoke: SKIP:") {
			t.Skip(strings.TrimPrefix(line, "docker-smoke: "))
		}
	}
	if !strings.Contains(string(out), "docker-smoke: PASS") {
		t.Fatal("scripts/docker-smoke.sh exited 0 without PASS")
	}
}
