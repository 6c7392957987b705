#!/bin/sh
# Make self-signed test certificates for the examples:
#   certs/site.pem + certs/site.key   for www.example.com and localhost
#   certs/api.pem  + certs/api.key    for api.example.com and *.api.example.com
# Real deployments use certificates from a CA (Let's Encrypt, say); point
# [listener.tls] cert at the full chain ("fullchain.pem") and key at the key.
set -eu
dir=${1:-$(dirname "$0")/certs}
mkdir -p "$dir"
make() { # name, subjectAltName
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
		-subj "/CN=$2" -addext "subjectAltName=$3" \
		-keyout "$dir/$1.key" -out "$dir/$1.pem" 2>/dev/null
	# Readable by all: the Docker image runs as uid 65532 and must read
	# it. Fine for a test key; keep a real key 0600 and owned by the user
	# lb runs as (in Docker: chown 65532 site.key).
	chmod 644 "$dir/$1.key"
	echo "wrote $dir/$1.pem and $dir/$1.key ($3)"
}
make site www.example.com "DNS:www.example.com,DNS:localhost,IP:127.0.0.1"
make api api.example.com "DNS:api.example.com,DNS:*.api.example.com"
