#!/usr/bin/env bash
# Runs lb, HAProxy and NGINX side by side and prints a Markdown table.
# Installs what it needs (haproxy, nginx and its stream module, wrk, h2load,
# openssl) with apt-get when missing.
# Arguments go to lbbench; see bench/README.md. Example:
#   bench/run.sh -rounds 3 -out bench/results/latest.md
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for t in haproxy nginx wrk h2load taskset openssl; do
	command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
# NGINX's layer-4 proxy (the tcp scenarios) is a module of its own in Debian.
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(nginx-stream)
if [ ${#missing[@]} -gt 0 ]; then
	pkgs=()
	for t in "${missing[@]}"; do
		case $t in
		taskset) pkgs+=(util-linux) ;;
		h2load) pkgs+=(nghttp2-client) ;;
		nginx-stream) pkgs+=(libnginx-mod-stream) ;;
		*) pkgs+=("$t") ;;
		esac
	done
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	echo "installing ${pkgs[*]}" >&2
	$sudo apt-get update -qq
	$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
# NGINX from apt may have started its own service on port 80; it is not used.
exec go run ./bench/lbbench "$@"
