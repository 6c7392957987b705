# lb: a static binary on a distroless base, running as a non-root user.
#
#   docker build -t lb .
#   docker run -v $PWD/lb.toml:/etc/lb/lb.toml:ro -v $PWD/certs:/etc/lb/certs:ro -p 8443:8443 lb
#
# Build stage: the Go toolchain, modules first so they cache.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
COPY third_party ./third_party
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/offloadlb/lb/internal/version.Version=${VERSION} -X github.com/offloadlb/lb/internal/version.Commit=${COMMIT}" \
      -o /out/lb ./cmd/lb
# The default folder for ACME storage, owned by the nonroot user: a named
# volume mounted on it starts with that owner (docs/acme.md).
RUN mkdir -p /out/acme

# Final stage: the binary, CA certificates and a nonroot user, nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/lb /usr/local/bin/lb
COPY --from=build --chown=65532:65532 /out/acme /var/lib/lb/acme
ENV LB_CONFIG=/etc/lb/lb.toml
# Listeners as in the examples (HTTPS 8443, HTTP 8080) and the admin server.
EXPOSE 8443 8080 9100
USER nonroot:nonroot
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/lb", "-healthcheck"]
ENTRYPOINT ["/usr/local/bin/lb"]
