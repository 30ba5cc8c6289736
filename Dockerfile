# syntax=docker/dockerfile:1
#
# One image for the whole mesh: the four service binaries and orchctl. The service a container
# runs is chosen by its command (`command: ["vault"]` in docker-compose.yml). The image holds no
# secret and no certificate: keys arrive at run time as compose/Kubernetes secrets and volumes.
#
#   docker build -t orchestrator-mesh:dev .
#
# The builder and the runtime must share a Debian release (same glibc): change both with
# --build-arg DEBIAN_SUITE=trixie.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_SUITE} AS builder
WORKDIR /src
# .dockerignore keeps target/, .git, the dev PKI (.orchestrator/) and deploy/compose/secrets/ out.
COPY . .
# The cache mounts keep the registry and target/ between builds; the binaries are copied out of
# the cached target/ in the same step, because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for bin in scaffolder secret-broker vault infra orchctl; do \
        install -m 0755 "target/release/${bin}" /out/ ; \
    done

FROM debian:${DEBIAN_SUITE}-slim AS runtime
# ca-certificates: the broker and infra call GitHub and the providers over HTTPS.
# curl: the compose healthchecks ask the plain-HTTP admin port for GET /readyz.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# Fixed uid/gid 10001: the compose pki job chowns each service's key to this user
# (deploy/compose/pki-init.sh looks the uid up by the name `orchestrator`).
RUN groupadd --system --gid 10001 orchestrator \
 && useradd --system --uid 10001 --gid orchestrator --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin orchestrator
COPY --from=builder /out/ /usr/local/bin/
# The authorization policy every service loads (ORCH_POLICY_FILE). Rebuild to change it.
COPY config/policy.toml /etc/orchestrator/policy.toml
WORKDIR /
USER 10001:10001
# No ENTRYPOINT: the command names the binary (scaffolder | secret-broker | vault | infra | orchctl).
CMD ["orchctl", "--help"]
