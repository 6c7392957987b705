#!/usr/bin/env bash
# Smoke test of the Docker image on a machine without a Docker engine.
#
# Builds the real Dockerfile with buildah (offline: local stand-ins for the
# base images, the host's module cache mounted into the build), runs the
# image with podman on the host network in front of two backends on
# 127.0.0.1, and checks: TLS round robin, the image's HEALTHCHECK, a
# backend going down, the non-root user, the stamped commit, and a clean
# exit on SIGTERM. Everything it makes (storage, images, container,
# backends, temp folder) is removed on exit, pass or fail.
#
#   scripts/docker-smoke.sh          # as root; about 1-2 minutes
#
# It installs buildah, podman, runc and busybox-static with apt-get if they
# are missing, and skips (exit 0) with a message where it cannot. See
# shared/notes/docker-offline.md for why it is done this way.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf 'docker-smoke: %s\n' "$*"; }
skip() {
	say "SKIP: $*"
	exit 0
}
fail() {
	say "FAIL: $*" >&2
	exit 1
}

# --- Tools -------------------------------------------------------------------

[ "$(id -u)" = 0 ] || skip "needs root (rootful podman and buildah); run it as root, as .ci/run does"
command -v go >/dev/null 2>&1 || skip "go is not installed"

# package:command-or-file it provides
wanted=(buildah:buildah podman:podman runc:runc busybox-static:/bin/busybox
	ca-certificates:/etc/ssl/certs/ca-certificates.crt curl:curl openssl:openssl
	python3:python3)
missing=()
for w in "${wanted[@]}"; do
	pkg=${w%%:*} what=${w#*:}
	if [ "${what#/}" != "$what" ]; then
		[ -e "$what" ] || missing+=("$pkg")
	else
		command -v "$what" >/dev/null 2>&1 || missing+=("$pkg")
	fi
done
# The stand-in golang image needs a static busybox (its /bin/sh).
if [ -e /bin/busybox ] && ldd /bin/busybox >/dev/null 2>&1; then
	missing+=(busybox-static)
fi
if [ ${#missing[@]} -gt 0 ]; then
	command -v apt-get >/dev/null 2>&1 || skip "missing ${missing[*]} and no apt-get to install them"
	say "installing ${missing[*]}"
	if ! apt_out=$({ timeout 300 apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}"; } 2>&1); then
		printf '%s\n' "$apt_out" | tail -5
		skip "apt-get could not install ${missing[*]}"
	fi
fi
for c in buildah podman runc curl openssl python3; do
	command -v "$c" >/dev/null 2>&1 || skip "$c is still missing after apt-get"
done

# Every podman and buildah call is bounded (timeout runs the binaries, not
# these functions); the slow ones have tighter limits of their own below.
podman() { timeout 120 podman "$@"; }
buildah() { timeout 900 buildah "$@"; }

# --- Private storage and config, all under one temp folder -------------------

tmp=$(mktemp -d /tmp/lb-docker-smoke.XXXXXX)
# containers/image keeps a blob info cache in /var/lib/containers/cache
# whatever storage.conf says; removed afterwards if it was not there before.
had_var_lib_containers=no
[ -e /var/lib/containers ] && had_var_lib_containers=yes
# Likewise runc's state folder and podman's parent cgroups (cgroupfs).
had_run_runc=no
[ -e /run/runc ] && had_run_runc=yes
had_libpod_cgroups=no
if [ -e /sys/fs/cgroup/libpod_parent ] || compgen -G '/sys/fs/cgroup/*/libpod_parent' >/dev/null; then
	had_libpod_cgroups=yes
fi
ctr=""
backend_pids=()
image=""

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	for p in "${backend_pids[@]}"; do
		kill "$p" 2>/dev/null
	done
	if [ -f "$tmp/containers.conf" ]; then
		if [ "$rc" != 0 ] && [ -n "$ctr" ]; then
			say "lb's log (last 40 lines):"
			timeout 20 podman logs --tail 40 "$ctr" 2>&1 | sed 's/^/  | /'
		fi
		timeout 60 podman rm -a -f -t 0 >/dev/null 2>&1
		timeout 60 buildah rm -a >/dev/null 2>&1
		timeout 60 podman rmi -a -f >/dev/null 2>&1
	fi
	# Anything still mounted under the temp folder (overlay layers,
	# container shm) has to go before the folder can.
	if [ -d "$tmp" ]; then
		awk -v t="$tmp" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r |
			while read -r m; do umount -l "$m" 2>/dev/null; done
		rm -rf "$tmp"
	fi
	if [ "$had_var_lib_containers" = no ]; then
		rm -f /var/lib/containers/cache/blob-info-cache-v1.boltdb
		rmdir /var/lib/containers/cache /var/lib/containers 2>/dev/null
	fi
	[ "$had_run_runc" = no ] && rmdir /run/runc 2>/dev/null
	if [ "$had_libpod_cgroups" = no ]; then
		# Empty cgroups only: rmdir refuses one with processes in it.
		for d in /sys/fs/cgroup/libpod_parent /sys/fs/cgroup/*/libpod_parent; do
			[ -d "$d" ] || continue
			find "$d" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
			rmdir "$d" 2>/dev/null
		done
	fi
	for p in "${backend_pids[@]}"; do
		wait "$p" 2>/dev/null
	done
	if [ "$rc" = 0 ]; then
		say "cleaned up"
	else
		say "cleaned up after a failure (exit $rc)"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$tmp/tmp" "$tmp/libpod" "$tmp/net" "$tmp/storage/graph" "$tmp/storage/run"
cat >"$tmp/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$tmp/libpod/events.log"
tmp_dir = "$tmp/libpod"

[network]
network_config_dir = "$tmp/net"
EOF
cat >"$tmp/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$tmp/storage/graph"
runroot = "$tmp/storage/run"
EOF
export CONTAINERS_CONF="$tmp/containers.conf"
export CONTAINERS_STORAGE_CONF="$tmp/storage.conf"
export TMPDIR="$tmp/tmp"
export BUILDAH_ISOLATION=oci

# --- Can this machine run containers at all? ----------------------------------

# A throwaway image of busybox alone, run, then exec'd into (as the
# HEALTHCHECK is). Where even that fails, containers cannot run here,
# which says nothing about lb's image: a chroot whose / is not a mount
# point (the storage's remount of / and runc's pivot_root need one), or
# one where runc exec does not land inside the container. Skip, showing
# the error. The marker folder exists only in the image, so an exec that
# ran outside the container cannot pass.
cannot_run() {
	tail -5 "$tmp/probe.err" | sed 's/^/  | /'
	skip "this machine cannot run containers: $*"
}
probe_image=localhost/lb-smoke-probe:latest
c=$(timeout 60 buildah from scratch 2>"$tmp/probe.err") || cannot_run "buildah from scratch failed"
m=$(timeout 60 buildah mount "$c" 2>"$tmp/probe.err") || cannot_run "container storage cannot be mounted"
mkdir -p "$m/bin" "$m/lb-smoke-probe"
cp /bin/busybox "$m/bin/busybox"
buildah umount "$c" >/dev/null
buildah config --workingdir /lb-smoke-probe "$c"
buildah commit -q "$c" "$probe_image" >/dev/null 2>"$tmp/probe.err" || cannot_run "an image cannot be committed"
buildah rm "$c" >/dev/null
probe=$(podman run -d --no-healthcheck --network none "$probe_image" /bin/busybox sleep 120 2>"$tmp/probe.err") ||
	cannot_run "a container that only sleeps does not start"
podman exec "$probe" /bin/busybox test -d /lb-smoke-probe 2>"$tmp/probe.err" ||
	cannot_run "podman exec does not run inside a running container"
podman rm -f -t 0 "$probe" >/dev/null
podman rmi "$probe_image" >/dev/null
say "containers run here (probe: run and exec)"

# --- Stand-ins for the base images (no registry is reachable) ---------------

goroot=$(go env GOROOT)
t0=$(date +%s)
c=$(timeout 60 buildah from scratch)
m=$(timeout 60 buildah mount "$c")
mkdir -p "$m/usr/local" "$m/bin" "$m/tmp" "$m/go" "$m/etc/ssl/certs"
chmod 1777 "$m/tmp"
timeout 300 cp -a "$goroot" "$m/usr/local/go"
cp /bin/busybox "$m/bin/busybox"
for a in $(/bin/busybox --list); do
	[ -e "$m/bin/$a" ] || ln -s busybox "$m/bin/$a"
done
cp /etc/ssl/certs/ca-certificates.crt "$m/etc/ssl/certs/"
buildah umount "$c" >/dev/null
buildah config --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	--env GOPATH=/go --env GOTOOLCHAIN=local --workingdir /go "$c"
timeout 300 buildah commit -q "$c" docker.io/library/golang:1.26 >/dev/null
buildah rm "$c" >/dev/null

c=$(timeout 60 buildah from scratch)
m=$(timeout 60 buildah mount "$c")
mkdir -p "$m/etc/ssl/certs" "$m/tmp" "$m/home/nonroot"
chmod 1777 "$m/tmp"
chown 65532:65532 "$m/home/nonroot"
cat >"$m/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$m/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
cp /etc/ssl/certs/ca-certificates.crt "$m/etc/ssl/certs/"
buildah umount "$c" >/dev/null
# As the real one: user 65532, home as working folder.
buildah config --user 65532 --workingdir /home/nonroot \
	--env PATH=/usr/local/bin:/usr/bin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$c"
timeout 120 buildah commit -q "$c" gcr.io/distroless/static-debian12:nonroot >/dev/null
buildah rm "$c" >/dev/null
say "base image stand-ins made in $(($(date +%s) - t0)) s"

# --- Build the real Dockerfile offline ---------------------------------------

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
version=$(git describe --tags --always 2>/dev/null || echo dev)
image="localhost/lb-smoke:$commit"
timeout 300 go mod download
gomodcache=$(go env GOMODCACHE)
say "building $image (VERSION=$version COMMIT=$commit)"
t0=$(date +%s)
if ! timeout 900 buildah bud --pull=never --network none --format docker \
	-v "$gomodcache:/go/pkg/mod" \
	--build-arg "VERSION=$version" --build-arg "COMMIT=$commit" \
	-t "$image" -f Dockerfile . >"$tmp/build.log" 2>&1; then
	tail -40 "$tmp/build.log" | sed 's/^/  | /'
	fail "buildah bud failed"
fi
build_s=$(($(date +%s) - t0))
size_b=$(podman image inspect --format '{{.Size}}' "$image")
size_mb=$(awk -v b="$size_b" 'BEGIN { printf "%.1f", b / 1e6 }')
say "built in ${build_s} s, image size ${size_mb} MB"

# --- The image's configuration -----------------------------------------------

user=$(podman image inspect --format '{{.Config.User}}' "$image")
case "${user%%:*}" in
"" | root | 0) fail "the image runs as root (User=\"$user\")" ;;
esac
say "image user: $user (non-root)"
hc=$(podman image inspect --format '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$image")
[ "$hc" = "CMD /usr/local/bin/lb -healthcheck" ] || fail "image HEALTHCHECK is \"$hc\", not CMD /usr/local/bin/lb -healthcheck (built without --format docker?)"
ep=$(podman image inspect --format '{{join .Config.Entrypoint " "}}' "$image")
[ "$ep" = /usr/local/bin/lb ] || fail "image ENTRYPOINT is \"$ep\""
podman image inspect --format '{{join .Config.Env " "}}' "$image" | grep -q 'LB_CONFIG=/etc/lb/lb.toml' ||
	fail "image has no ENV LB_CONFIG=/etc/lb/lb.toml"
# Throwaway runs: no health check (podman would ask systemd for a timer).
ver=$(timeout 60 podman run --rm --no-healthcheck --network none "$image" -version)
say "lb -version in the image: $ver"
case "$ver" in
*"commit $commit"*) ;;
*) fail "lb -version does not print the stamped commit $commit" ;;
esac

# --- Certificates, backends and config on 127.0.0.1 --------------------------

free_port() {
	local p i
	for i in $(seq 1 200); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			case " ${used_ports:-} " in *" $p "*) continue ;; esac
			used_ports="${used_ports:-} $p"
			echo "$p"
			return 0
		fi
	done
	fail "no free port found"
}
https_port=$(free_port)
admin_port=$(free_port)
b1_port=$(free_port)
b2_port=$(free_port)

sh examples/gencert.sh "$tmp/certs" >/dev/null
# The container runs as nonroot (65532); the keys are 0600.
chown -R 65532:65532 "$tmp/certs"

for b in 1 2; do
	d="$tmp/backend$b"
	mkdir -p "$d"
	echo "backend-$b" >"$d/index.html"
	echo ok >"$d/healthz"
	port_var="b${b}_port"
	/bin/busybox httpd -f -p "127.0.0.1:${!port_var}" -h "$d" &
	backend_pids+=($!)
done

cat >"$tmp/lb.toml" <<EOF
[global]
access_log = "stdout"
admin = "127.0.0.1:$admin_port"
shutdown_grace = "5s"
watch = false

[[listener]]
name = "https"
bind = "127.0.0.1:$https_port"
pool = "web"
  [listener.tls]
  cert = "/etc/lb/certs/site.pem"
  key = "/etc/lb/certs/site.key"

[[pool]]
name = "web"
algorithm = "round_robin"
connect_timeout = "500ms"
  [pool.health]
  check = "http"
  path = "/healthz"
  interval = "500ms"
  timeout = "300ms"
  fall = 2

  [[pool.backend]]
  address = "127.0.0.1:$b1_port"
  [[pool.backend]]
  address = "127.0.0.1:$b2_port"
EOF
chmod 644 "$tmp/lb.toml"

mounts=(-v "$tmp/lb.toml:/etc/lb/lb.toml:ro" -v "$tmp/certs:/etc/lb/certs:ro")
timeout 60 podman run --rm --no-healthcheck --network none "${mounts[@]}" "$image" -check | sed 's/^/  /'

# --- Run it -----------------------------------------------------------------

# The image's HEALTHCHECK stays, and "podman healthcheck run" below runs
# it; podman 4.3 also asks systemd for a timer to run it, which fails
# harmlessly where there is no systemd, so that one message is dropped.
# (Through a file: a process substitution here would hang the $(...).)
no_systemd_noise() { grep -v 'unable to get systemd connection' "$tmp/podman.err" >&2 || true; }
ctr=$(timeout 60 podman run -d --name "lb-smoke-$$" --network host "${mounts[@]}" "$image" 2>"$tmp/podman.err") ||
	{ no_systemd_noise; fail "podman run failed"; }
no_systemd_noise
say "container ${ctr:0:12} started; HTTPS 127.0.0.1:$https_port, admin 127.0.0.1:$admin_port"

# wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local deadline=$(($(date +%s) + secs))
	until "$@" >/dev/null 2>&1; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			fail "timed out after ${secs} s waiting for $what"
		fi
		if [ "$(timeout 20 podman inspect --format '{{.State.Running}}' "$ctr" 2>/dev/null)" != true ]; then
			fail "the container exited while waiting for $what"
		fi
		sleep 0.2
	done
}
admin_url="http://127.0.0.1:$admin_port"
status() { curl -fsS --max-time 3 "$admin_url/status.json"; }
# backend_up ADDRESS true|false: the pool's view of one backend.
backend_up() {
	status | python3 -c '
import json, sys
s = json.load(sys.stdin)
for p in s["pools"]:
    for b in p["backends"]:
        if b["address"] == sys.argv[1]:
            sys.exit(0 if str(b["up"]).lower() == sys.argv[2] else 1)
sys.exit(1)' "$1" "$2"
}

t0=$(date +%s)
wait_for 30 "the admin /healthz" curl -fsS --max-time 2 "$admin_url/healthz"
say "admin /healthz answered after $(($(date +%s) - t0)) s"
wait_for 15 "backend 1 up" backend_up "127.0.0.1:$b1_port" true
wait_for 15 "backend 2 up" backend_up "127.0.0.1:$b2_port" true

https_url="https://127.0.0.1:$https_port/"
# The certificate served is the one mounted: verified against it, not -k.
curl -fsS --max-time 5 --cacert "$tmp/certs/site.pem" "$https_url" >/dev/null ||
	fail "HTTPS with the mounted certificate as the CA failed"
sent=1
seen1=0 seen2=0
for i in $(seq 1 20); do
	body=$(curl -fsSk --max-time 5 "$https_url") || fail "request $i through lb failed"
	sent=$((sent + 1))
	case "$body" in
	backend-1) seen1=$((seen1 + 1)) ;;
	backend-2) seen2=$((seen2 + 1)) ;;
	*) fail "unexpected answer: $body" ;;
	esac
done
if [ "$seen1" = 0 ] || [ "$seen2" = 0 ]; then
	fail "not round robin: backend-1 $seen1, backend-2 $seen2 of 20"
fi
say "round robin over TLS: backend-1 $seen1, backend-2 $seen2 of 20"

# The image's HEALTHCHECK, as the engine runs it, and by hand.
hc_out=$(timeout 30 podman healthcheck run "$ctr" 2>&1) || fail "podman healthcheck run: $hc_out"
say "podman healthcheck run (the image's HEALTHCHECK): ${hc_out:-healthy}"
timeout 30 podman exec "$ctr" /usr/local/bin/lb -healthcheck || fail "lb -healthcheck inside the container failed"
say "lb -healthcheck inside the container: exit 0"

# A backend goes away: marked down within a few seconds, traffic carries on.
kill "${backend_pids[1]}"
wait "${backend_pids[1]}" 2>/dev/null || true
t0=$(date +%s)
wait_for 10 "backend 2 marked down in /status.json" backend_up "127.0.0.1:$b2_port" false
say "backend 2 stopped; /status.json shows it down after $(($(date +%s) - t0)) s"
for i in $(seq 1 10); do
	body=$(curl -fsSk --max-time 5 "$https_url") || fail "request $i after backend 2 went down failed"
	sent=$((sent + 1))
	[ "$body" = backend-1 ] || fail "answer from \"$body\" after backend 2 went down"
done
say "10 more requests all answered by backend-1"

served=$(status | python3 -c 'import json,sys; print(sum(l["requests"] for l in json.load(sys.stdin)["listeners"]))')
[ "$served" -ge "$sent" ] || fail "lb counted $served requests, $sent were sent"
logged=$(timeout 20 podman logs "$ctr" 2>/dev/null | grep -c 'request:.*method=GET' || true)

# --- SIGTERM: a clean exit ---------------------------------------------------

t0=$(date +%s)
timeout 60 podman stop -t 20 "$ctr" >/dev/null 2>"$tmp/podman.err" || { no_systemd_noise; fail "podman stop failed"; }
no_systemd_noise
stop_s=$(($(date +%s) - t0))
code=$(timeout 20 podman inspect --format '{{.State.ExitCode}}' "$ctr")
[ "$code" = 0 ] || fail "lb exited with code $code on SIGTERM"
say "SIGTERM: exit code 0 after ${stop_s} s"

say "PASS: build ${build_s} s, image ${size_mb} MB, ${served} requests served through the container (${logged} in its access log)"
