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
	chmod 600 "$dir/$1.key"
	echo "wrote $dir/$1.pem and $dir/$1.key ($3)"
}
make site www.example.com "DNS:www.example.com,DNS:localhost,IP:127.0.0.1"
make api api.example.com "DNS:api.example.com,DNS:*.api.example.com"
