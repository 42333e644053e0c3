# syntax=docker/dockerfile:1
#
# Images of spire-server and spire-agent laid out as upstream SPIRE's
# (ghcr.io/spiffe/spire-server, ghcr.io/spiffe/spire-agent): the binary in /opt/spire/bin,
# WORKDIR /opt/spire, `<binary> run` as the entrypoint (so Kubernetes `args` such as
# ["-config", "/run/spire/config/server.conf"] work unchanged), the server as 1000:1000 and
# the agent as root. Build one target at a time:
#
#   docker build --target spire-server -t spire-rs/spire-server:0.1.0 .
#   docker build --target spire-agent -t spire-rs/spire-agent:0.1.0 .

# Build stage: both binaries from the locked dependency set.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && mkdir -p /out \
    && cp target/release/spire-server target/release/spire-agent /out/

# What both images share: Debian's CA certificates (for trust_bundle_url, ACME and
# federation over https_web) on the same Debian release the binaries were linked on.
FROM debian:bookworm-slim AS spire-base
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/spire

# SPIRE Server: runs as 1000:1000 by default, as upstream's image. The folders upstream's
# image creates (default config, socket and data paths) belong to that user.
FROM spire-base AS spire-server
ARG spireuid=1000
ARG spiregid=1000
RUN mkdir -p /opt/spire/bin /etc/spire/server /run/spire/server/private \
        /tmp/spire-server/private /var/lib/spire/server \
    && chown -R ${spireuid}:${spiregid} /opt/spire /etc/spire /run/spire /tmp/spire-server \
        /var/lib/spire
COPY --from=builder --chown=${spireuid}:${spiregid} --chmod=755 /out/spire-server /opt/spire/bin/spire-server
USER ${spireuid}:${spiregid}
ENTRYPOINT ["/opt/spire/bin/spire-server", "run"]

# SPIRE Agent: runs as root by default, as upstream's image, to share the Workload API
# socket on a hostPath and to read other processes' /proc entries (hostPID).
FROM spire-base AS spire-agent
ARG spireuid=0
ARG spiregid=0
RUN mkdir -p /opt/spire/bin /etc/spire/agent /run/spire/agent/public \
        /tmp/spire-agent/public /var/lib/spire/agent \
    && chown -R ${spireuid}:${spiregid} /opt/spire /etc/spire /run/spire /tmp/spire-agent \
        /var/lib/spire
COPY --from=builder --chown=${spireuid}:${spiregid} --chmod=755 /out/spire-agent /opt/spire/bin/spire-agent
USER ${spireuid}:${spiregid}
ENTRYPOINT ["/opt/spire/bin/spire-agent", "run"]
