# syntax=docker/dockerfile:1
#
# ado-auth-proxy container image.
#
#   docker build -t ado-auth-proxy .
#
# The image ships config/sidecar.toml as /etc/ado-auth-proxy/config.toml: proxy on
# 127.0.0.1:8080, admin on 127.0.0.1:9090, identity from AZURE_TENANT_ID, AZURE_CLIENT_ID and
# AZURE_CLIENT_SECRET (or a secret_file in a mounted config). Loopback is right for a pod sidecar
# (the app container shares the pod's loopback; see deploy/kubernetes/sidecar.yaml) and for
# `docker run --network container:APP`. Kubernetes probes and Prometheus reach the admin
# listener on the pod IP, so the sidecar manifest mounts a config with admin on 0.0.0.0:9090.
# Binding the proxy listener to a non-loopback address is the operator's explicit choice, in
# a config mounted over /etc/ado-auth-proxy/config.toml (or ADO_AUTH_PROXY_LISTEN__ADDRESS).

ARG RUST_VERSION=1

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# Cache mounts (BuildKit) keep the crate registry and compiled dependencies between builds; the
# binary is copied out of the target cache because cache mounts are not part of the image.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin ado-auth-proxy \
 && install -D -m 0755 target/release/ado-auth-proxy /out/ado-auth-proxy

# ---------------------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="ado-auth-proxy" \
      org.opencontainers.image.description="Authenticating reverse proxy for Azure DevOps: swaps PATs for Entra ID service-principal tokens" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

COPY --from=builder /out/ado-auth-proxy /usr/local/bin/ado-auth-proxy
COPY config/sidecar.toml /etc/ado-auth-proxy/config.toml

ENV ADO_AUTH_PROXY_CONFIG=/etc/ado-auth-proxy/config.toml \
    RUST_LOG=info

# distroless "nonroot" user, numeric so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

# 8080: proxy listener, 9090: admin (/metrics, /healthz, /readyz)
EXPOSE 8080 9090

# Exits 0 when the admin /readyz answers ready (admin address read from the same config).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/ado-auth-proxy", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/ado-auth-proxy"]
CMD ["run"]
