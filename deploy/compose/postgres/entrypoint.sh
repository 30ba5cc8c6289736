#!/bin/sh
# The entrypoint of deploy/compose/postgres/Dockerfile: what the official image's does, for the
# settings docker-compose.yml uses. On an empty $PGDATA: initdb with the superuser's password
# from POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD), a temporary server on the Unix socket only,
# POSTGRES_DB created, every /docker-entrypoint-initdb.d/*.sh (run if executable, else sourced)
# and *.sql run in order, then the temporary server stopped. Then the real server, on all
# interfaces, password (SCRAM) authentication for every TCP connection.
set -eu

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA POSTGRES_USER POSTGRES_DB

if [ "${1:-postgres}" != postgres ]; then
    exec "$@"
fi
shift || true

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        tr -d '\r\n' < "$POSTGRES_PASSWORD_FILE" > "$pwfile"
    elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
        printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    fi
    if [ ! -s "$pwfile" ]; then
        rm -f "$pwfile"
        echo "postgres: set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD) for the superuser" >&2
        exit 1
    fi
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"

    # The temporary server: Unix socket only, so nothing on the network (and no healthcheck
    # over TCP) sees it before the init scripts are done.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname postgres \
            --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case $f in
            *.sh)
                echo "postgres: running $f"
                if [ -x "$f" ]; then "$f"; else . "$f"; fi
                ;;
            *.sql)
                echo "postgres: running $f"
                psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" \
                    --dbname "$POSTGRES_DB" -f "$f"
                ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres: init done"
fi

exec postgres "$@"
