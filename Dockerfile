# One image for the whole mesh: the four service binaries, orchctl, and the GitHub and provider
# emulators (for the compose `dev` profile). The command picks the binary (`command: ["vault"]`
# in docker-compose.yml). The image holds no secret and no certificate: keys arrive at run time
# as compose/Kubernetes secrets and volumes.
#
#   docker build -t orchestrator-mesh:dev .                     # compiles in rust:1.95-bookworm
#
# Without a registry (scripts/compose-test does this): binaries built on the host, base images
# built locally (scripts/lib/docker.sh):
#
#   mkdir -p target/docker-bin && cp target/release/{scaffolder,...} target/docker-bin/
#   docker build -t orchestrator-mesh:dev --build-arg BINARIES=host \
#       --build-arg BUILDER_IMAGE=orchestrator-base:bookworm \
#       --build-arg RUNTIME_IMAGE=orchestrator-base:bookworm .
#
# Builds with the classic builder and with BuildKit alike: no `# syntax=` line (it would pull a
# frontend image), no `RUN --mount`, no `COPY --chmod`. The builder and the runtime must share a
# Debian release (same glibc), and host binaries must come from a host with that glibc or older.

ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
# The classic builder keeps this stage as an untagged image (sources and binaries);
# scripts/compose-test removes it by this label.
LABEL orchestrator.stage=builder
# build: cargo build --release here. host: take the binaries from target/docker-bin/ in the build
# context (.dockerignore lets that folder through), built on the host beforehand.
ARG BINARIES=build
WORKDIR /src
# .dockerignore keeps target/ (but target/docker-bin/), .git, the dev PKI (.orchestrator/) and
# deploy/compose/secrets/ out.
COPY . .
RUN set -eu; \
    bins="scaffolder secret-broker vault infra orchctl github-emulator provider-emulators"; \
    case "$BINARIES" in \
      build) cargo build --release --locked --bins; from=target/release ;; \
      host) from=target/docker-bin ;; \
      *) echo "BINARIES must be build or host, not $BINARIES" >&2; exit 1 ;; \
    esac; \
    mkdir -p /out; \
    for bin in $bins; do install -m 0755 "$from/$bin" /out/; done; \
    rm -rf /src/target

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: the broker and infra call GitHub and the providers over HTTPS. Nothing else:
# the healthchecks run `orchctl ready` (GET /readyz on the admin port), not curl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
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
# No ENTRYPOINT: the command names the binary (scaffolder | secret-broker | vault | infra |
# orchctl | github-emulator | provider-emulators).
CMD ["orchctl", "--help"]
