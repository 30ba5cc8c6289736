# Sourced by scripts/test. Sets ORCH_TEST_DATABASE_URL to a PostgreSQL server that lets the tests
# create a database (and roles) per test.

ensure_postgres() {
  if [ -n "${ORCH_TEST_DATABASE_URL:-}" ]; then
    return
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432 -U postgres 2>/dev/null; then
    export ORCH_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    echo "PostgreSQL: using the server at 127.0.0.1:5432"
    return
  fi

  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL: no server answers at 127.0.0.1:5432 and no binaries in /usr/lib/postgresql/*/bin" >&2
    echo "install them (apt-get install postgresql) or set ORCH_TEST_DATABASE_URL" >&2
    exit 1
  fi
  PG_TMP=$(mktemp -d)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # PostgreSQL refuses to run as root: drop to the postgres user with a directory it owns.
  PG_AS=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$PG_TMP"
    PG_AS=(runuser -u postgres --)
  fi
  "${PG_AS[@]}" "$bin/initdb" -D "$PG_TMP/data" -U postgres -A trust --no-sync >/dev/null
  "${PG_AS[@]}" "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/log" -w \
    -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  PG_BIN=$bin
  trap 'stop_postgres' EXIT
  export ORCH_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL: started a throwaway cluster on 127.0.0.1:$port ($PG_TMP)"
}

stop_postgres() {
  if [ -n "${PG_TMP:-}" ]; then
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}
