#!/usr/bin/env bash
# Runs .ci/run on a fresh Debian 12 (bookworm) root, to prove that CI's
# own install steps are enough: nothing installed by hand on this machine
# can make it pass.
#
#   scripts/ci-clean-room.sh [COMMIT|BRANCH|PATH]    # as root
#
# The root is made by mmdebstrap (Debian's "important" packages and git,
# with which CI makes its checkout) from the Debian mirrors this machine's
# apt uses; only Go (GOROOT) is copied in, and modules come through the Go
# module proxy as on a new machine. The argument, a commit or branch of
# this repository (default HEAD) or the path of a repository (its
# checked-out HEAD), is cloned fresh into the root, with a read-only copy
# of shared/ beside it as CI lays it, and `bash .ci/run` runs there in a
# chroot as CI runs it: as root, CI=true, no standard input. The chroot
# has /proc, /sys and /dev mounted and shares this machine's network,
# loopback included. Everything (mounts, processes in the root, the root)
# is removed on exit, pass or fail. The exit code is .ci/run's.
#
# Environment:
#   CLEAN_ROOM_CACHE=FILE.tar  reuse this root tarball, or make it there
#                              (default: make a new root every time)
#   CLEAN_ROOM_SHARED=DIR      shared/ to lay beside the clone
#                              (default: ../shared beside this repository)
#   CLEAN_ROOM_LOG=FILE        also write .ci/run's output there
#   CLEAN_ROOM_KEEP=1          keep the root (unmounted) for a look after
#
# mmdebstrap is installed with apt-get if missing. Making the root takes a
# few minutes; .ci/run itself then installs its tools (Chromium among
# them) and runs the whole race suite.
set -euo pipefail

say() { printf 'ci-clean-room: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 2
}

[ "$(id -u)" = 0 ] || die "needs root (chroot, mount)"
repo=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-HEAD}

if [ -d "$what" ]; then
	src=$(cd "$what" && git rev-parse --show-toplevel)
	rev=$(git -C "$src" rev-parse HEAD)
else
	src=$repo
	rev=$(git -C "$repo" rev-parse --verify "$what^{commit}") || die "no commit or branch \"$what\" in $repo"
fi
shared=${CLEAN_ROOM_SHARED:-$repo/../shared}
[ -d "$shared" ] || die "no shared/ at $shared; set CLEAN_ROOM_SHARED"
shared=$(cd "$shared" && pwd)
goroot=$(go env GOROOT) || die "go is not installed here (its GOROOT is copied in)"

if ! command -v mmdebstrap >/dev/null 2>&1; then
	say "installing mmdebstrap"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

work=$(mktemp -d /var/tmp/lb-clean-room.XXXXXX)
root=$work/root
mounted=()

# Processes still running in the root (a daemon a package started, a
# test's leftover) hold its mounts; they are found by their root folder.
kill_in_root() {
	local p r
	for p in /proc/[0-9]*; do
		r=$(readlink "$p/root" 2>/dev/null) || continue
		case "$r" in "$root" | "$root"/*) kill -KILL "${p#/proc/}" 2>/dev/null ;; esac
	done
}
still_mounted() { awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts; }

cleanup() {
	local rc=$?
	set +e
	trap - EXIT INT TERM
	kill_in_root
	local i
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
		umount -R "${mounted[i]}" 2>/dev/null || umount -R -l "${mounted[i]}"
	done
	# Mounts made inside the chroot (by podman, say) go as well.
	still_mounted | sort -r | while read -r m; do umount -l "$m"; done
	if [ -n "$(still_mounted)" ]; then
		say "still mounted, $work left in place:"
		still_mounted >&2
		exit "$((rc ? rc : 1))"
	fi
	if [ "${CLEAN_ROOM_KEEP:-}" = 1 ]; then
		say "root kept in $root"
	else
		rm -rf --one-file-system "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The root ----------------------------------------------------------------

# The Debian entries of this machine's apt sources (other vendors' are not
# Debian's registry); mmdebstrap's default mirrors where there are none.
sources=()
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
	[ -s "$f" ] && sources+=("$f")
done
tarball=${CLEAN_ROOM_CACHE:-$work/root.tar}
if [ ! -s "$tarball" ]; then
	say "making a bookworm root (mmdebstrap) in $tarball"
	t0=$(date +%s)
	mkdir -p "$(dirname "$tarball")"
	# The name must end in .tar: mmdebstrap picks its output format by it.
	mmdebstrap --quiet --variant=important --include=git bookworm "${tarball%.tar}.part.tar" "${sources[@]}"
	mv "${tarball%.tar}.part.tar" "$tarball"
	say "root made in $(($(date +%s) - t0)) s"
fi
mkdir -p "$root"
tar -C "$root" -xf "$tarball"

mkdir -p "$root/usr/local"
cp -a "$goroot" "$root/usr/local/go"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The local CA certificates this machine trusts, as a network that
# inspects TLS on its way out needs them; the ca-certificates package,
# when .ci/run installs it, adds them to the root's trust store.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
	mkdir -p "$root/usr/local/share/ca-certificates"
	cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
# Packages' maintainer scripts must not start daemons in the chroot: they
# would outlive the run and hold its mounts.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

# The checkout, as CI makes it, and shared/ beside it without write bits.
mkdir -p "$root/ci"
git clone -q --no-hardlinks "$src" "$root/ci/lb"
git -C "$root/ci/lb" checkout -q --detach "$rev"
cp -a "$shared" "$root/ci/shared"
chmod -R a-w "$root/ci/shared"
say "cloned $(git -C "$root/ci/lb" log -1 --format='%h %s' | cut -c1-100)"

# The root bound onto itself is a mount point, as / is on a machine:
# container runtimes (runc's pivot_root) refuse to start from a root that
# is not.
mounted+=("$root")
mount --bind "$root" "$root"
# Private: what is mounted in the root shows nowhere else.
mount --make-private "$root"
for d in proc sys dev; do
	mkdir -p "$root/$d"
	mounted+=("$root/$d")
	case $d in
	proc) mount -t proc proc "$root/proc" ;;
	*)
		mount --rbind "/$d" "$root/$d"
		mount --make-rslave "$root/$d"
		;;
	esac
done

# --- .ci/run -----------------------------------------------------------------

say "running .ci/run on $(git -C "$root/ci/lb" rev-parse --short HEAD) in $root"
t0=$(date +%s)
log=${CLEAN_ROOM_LOG:-/dev/null}
set +e
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 CI=true \
	PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	/bin/bash -c 'cd /ci/lb && exec bash .ci/run' </dev/null 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
say ".ci/run exited $rc after $(($(date +%s) - t0)) s"
exit "$rc"
