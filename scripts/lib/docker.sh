# Sourced by scripts/compose-test (and scripts/test): a Docker engine, a compose tool and the base
# images, on a machine that may have none of them and no image registry.
#
#   ensure_docker        `docker info` answers; else (root, Debian) installs docker.io and starts
#                        dockerd in the background (overlay2, else vfs), logs in $ORCH_DOCKER_LOG
#   ensure_compose       sets the COMPOSE array: `docker compose` (v2) when the CLI has it, else
#                        Debian's docker-compose 1.29 (installed when missing)
#   ensure_base_images   sets ORCH_BASE_IMAGE and ORCH_POSTGRES_IMAGE: debian:bookworm-slim and
#                        postgres:15 when they can be pulled; else orchestrator-base:bookworm (a
#                        debootstrap of Debian bookworm, imported) and orchestrator-postgres:15
#                        (deploy/compose/postgres, Debian's postgresql-15), each built once and
#                        then reused
#
# Needs scripts/lib/setup.sh sourced first (apt_install).

ORCH_DOCKER_LOG=${ORCH_DOCKER_LOG:-/tmp/orchestrator-dockerd.log}

docker_answers() { docker info >/dev/null 2>&1; }

# start_dockerd ARGS...: starts dockerd with ARGS in the background; true once it answers.
start_dockerd() {
  echo "docker: starting dockerd $* (log: $ORCH_DOCKER_LOG)"
  nohup dockerd "$@" >>"$ORCH_DOCKER_LOG" 2>&1 &
  local pid=$! i
  for i in $(seq 1 60); do
    docker_answers && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 1
  done
  kill "$pid" 2>/dev/null
  return 1
}

ensure_docker() {
  docker_answers && return 0
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io || {
      echo "docker: no engine and cannot install one (Debian: apt-get install docker.io)" >&2
      return 1
    }
  fi
  command -v docker >/dev/null || apt_install docker.io
  if [ "$(id -u)" != 0 ]; then
    echo "docker: dockerd is installed but not running, and starting it needs root" >&2
    return 1
  fi
  # overlay2 where the kernel and the filesystem allow it; vfs (slow, always works) otherwise;
  # without iptables for sandboxes that refuse it (containers still reach each other).
  start_dockerd && return 0
  start_dockerd --storage-driver=vfs && return 0
  start_dockerd --storage-driver=vfs --iptables=false && return 0
  echo "docker: dockerd would not start; see $ORCH_DOCKER_LOG" >&2
  tail -n 20 "$ORCH_DOCKER_LOG" >&2
  return 1
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  else
    command -v docker-compose >/dev/null || apt_install docker-compose || true
    if ! command -v docker-compose >/dev/null; then
      echo "docker: no compose tool (install the compose v2 plugin, or Debian's docker-compose)" >&2
      return 1
    fi
    COMPOSE=(docker-compose)
  fi
  echo "docker: compose is: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || true))"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# A registry answers when a small pull works (the first call only; remembered).
try_pull() {
  image_exists "$1" && return 0
  [ "${ORCH_NO_REGISTRY:-}" = 1 ] && return 1
  if timeout 60 docker pull -q "$1" >/dev/null 2>&1; then
    return 0
  fi
  ORCH_NO_REGISTRY=1
  return 1
}

ensure_base_images() {
  if try_pull debian:bookworm-slim && try_pull postgres:15; then
    ORCH_BASE_IMAGE=debian:bookworm-slim
    ORCH_POSTGRES_IMAGE=postgres:15
    return 0
  fi
  echo "docker: no registry; building the base images locally"
  ORCH_BASE_IMAGE=orchestrator-base:bookworm
  ORCH_POSTGRES_IMAGE=orchestrator-postgres:15
  if ! image_exists "$ORCH_BASE_IMAGE"; then
    command -v debootstrap >/dev/null || apt_install debootstrap || {
      echo "docker: need debootstrap to build the base image (apt-get install debootstrap)" >&2
      return 1
    }
    local root
    root=$(mktemp -d /tmp/orchestrator-rootfs.XXXXXX)
    echo "docker: debootstrap bookworm (minbase) into $root (a few minutes, once)"
    debootstrap --variant=minbase bookworm "$root" "${ORCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
      >/tmp/orchestrator-debootstrap.log 2>&1 || {
      echo "docker: debootstrap failed; see /tmp/orchestrator-debootstrap.log" >&2
      rm -rf "$root"
      return 1
    }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$ORCH_BASE_IMAGE" >/dev/null
    rm -rf "$root"
  fi
  if ! image_exists "$ORCH_POSTGRES_IMAGE"; then
    echo "docker: building $ORCH_POSTGRES_IMAGE from Debian's postgresql-15 (once)"
    docker_build -q -t "$ORCH_POSTGRES_IMAGE" --build-arg BASE_IMAGE="$ORCH_BASE_IMAGE" \
      deploy/compose/postgres >/dev/null
  fi
  export ORCH_BASE_IMAGE ORCH_POSTGRES_IMAGE
}

# docker build with whichever builder the engine and the CLI have: BuildKit needs the buildx
# plugin with a recent CLI, so without it the classic builder is asked for explicitly (the
# Dockerfiles need nothing BuildKit-only).
docker_build() {
  if docker buildx version >/dev/null 2>&1; then
    docker build "$@"
  else
    DOCKER_BUILDKIT=0 docker build "$@" 2> >(grep -v -i 'deprecated\|buildx\|legacy builder\|BuildKit is currently disabled\|environment-variable\.$' >&2)
  fi
}
