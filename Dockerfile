# sallyport container image: a static-ish Rust binary on distroless (glibc, CA roots, no
# shell, no package manager), running as uid 65532.
#
#   docker build -t sallyport .
#   docker run --rm -p 8443:8443 -p 9090:9090 -v "$PWD/my-config:/etc/sallyport:ro" sallyport
#
# The config is read from $SALLYPORT_CONFIG (/etc/sallyport/sallyport.toml). Inside a
# container it must listen on 0.0.0.0 (not 127.0.0.1), and it needs an [admin] section
# for the HEALTHCHECK below (and for Kubernetes probes). See deploy/kubernetes/.

# The toolchain the project is built and tested with (rust-version in Cargo.toml is the
# minimum). bookworm, so the binary's glibc matches distroless cc-debian12.
FROM rust:1.95-bookworm AS builder
WORKDIR /build

# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every edit under src/. The stub targets are thrown away.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --profile dist --locked \
    && rm -rf src

# COPY keeps the files' modification times, which can be older than the stub build:
# touch them so cargo rebuilds the crate itself instead of shipping the stub.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --profile dist --locked \
    && ./target/dist/sallyport --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sallyport" \
      org.opencontainers.image.description="An authenticating reverse proxy: TLS, htpasswd Basic, JWT Bearer and OIDC in front of any HTTP service" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /build/target/dist/sallyport /usr/local/bin/sallyport
ENV SALLYPORT_CONFIG=/etc/sallyport/sallyport.toml
# Numeric, so Kubernetes' runAsNonRoot can verify it (it cannot resolve "nonroot").
USER 65532:65532
# 8443: traffic ([server] listen); 9090: /healthz /readyz /metrics ([admin] listen).
EXPOSE 8443 9090
# No shell in this image: the binary probes its own admin listener (GET /healthz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/sallyport", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sallyport"]
