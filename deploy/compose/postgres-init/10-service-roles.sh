#!/bin/sh
# Postgres first-start initialisation (mounted at /docker-entrypoint-initdb.d; the postgres image
# runs it once, when the data volume is empty, as the postgres OS user against a server that
# listens on its Unix socket only).
#
# One database ($POSTGRES_DB, "orchestrator") with, per service, one schema and two LOGIN
# roles: the schema's owner (`<role>_owner`, DATABASE_MIGRATION_URL), which runs the migrations
# at start, and the runtime role (`<role>`, DATABASE_URL), which owns nothing: the service grants
# it row access after migrating, so it cannot drop the audit log's triggers or alter a table.
#
#   service        runtime role / schema   owner role            passwords taken from
#   scaffolder     scaffolder              scaffolder_owner      /run/secrets/scaffolder{,_owner}_database_url
#   secret-broker  secret_broker           secret_broker_owner   /run/secrets/secret_broker{,_owner}_database_url
#   vault          vault                   vault_owner           /run/secrets/vault{,_owner}_database_url
#   infra          infra                   infra_owner           /run/secrets/infra{,_owner}_database_url
#
# Each role's search_path is its own schema, it may connect to this database only, and it has no
# privilege on the other schemas (they belong to other roles and nothing is granted), so one
# service's credentials cannot read or change another's tables. PUBLIC loses its default rights
# on the database and the public schema.
#
# The password of each role is read from the same DATABASE_URL secret the service is given, so
# it exists in one file only. The URL must look like
#   postgres://<role>:<password>@postgres:5432/orchestrator
# with a password of URL-safe characters (A-Z a-z 0-9 . _ ~ -; no percent-encoding), as
# deploy/compose/init-secrets.sh makes it. No password is ever printed.
#
# Every secret is checked before anything is changed, and all SQL runs in one transaction: the
# image does not re-run this script once the data directory exists, so a half-done init would
# stay half done. If it fails, fix the secret and remove the volume
# (`docker compose down -v` drops it, and the other volumes).
#
# POSIX sh, no `set -u`: if this file loses its executable bit the entrypoint sources it into
# its own bash, and must not inherit stricter options from here.
set -e

orch_db=${POSTGRES_DB:-orchestrator}

# Prints the password in /run/secrets/<role>_database_url, after checking the URL names <role>.
orch_role_password() {
    orch_file=/run/secrets/$1_database_url
    if [ ! -r "$orch_file" ]; then
        echo "postgres-init: $orch_file is missing or unreadable (see deploy/compose/README.md)" >&2
        return 1
    fi
    orch_url=$(tr -d '\r\n' < "$orch_file")
    case $orch_url in
        postgres://*|postgresql://*) ;;
        *) echo "postgres-init: $orch_file does not start with postgres://" >&2; return 1 ;;
    esac
    orch_rest=${orch_url#*://}
    orch_userinfo=${orch_rest%%@*}
    if [ "$orch_userinfo" = "$orch_rest" ]; then
        echo "postgres-init: $orch_file has no <role>:<password>@ part" >&2
        return 1
    fi
    orch_user=${orch_userinfo%%:*}
    orch_pass=${orch_userinfo#*:}
    if [ "$orch_user" != "$1" ]; then
        echo "postgres-init: $orch_file names role '$orch_user'; it must be '$1'" >&2
        return 1
    fi
    if [ "$orch_pass" = "$orch_userinfo" ] || [ -z "$orch_pass" ]; then
        echo "postgres-init: $orch_file has no password" >&2
        return 1
    fi
    case $orch_pass in
        *[!A-Za-z0-9._~-]*)
            echo "postgres-init: the password in $orch_file may use only A-Z a-z 0-9 . _ ~ -" >&2
            return 1 ;;
    esac
    if [ "${#orch_pass}" -lt 24 ]; then
        echo "postgres-init: the password in $orch_file is shorter than 24 characters" >&2
        return 1
    fi
    printf '%s' "$orch_pass"
}

orch_pw_scaffolder=$(orch_role_password scaffolder) || exit 1
orch_pw_secret_broker=$(orch_role_password secret_broker) || exit 1
orch_pw_vault=$(orch_role_password vault) || exit 1
orch_pw_infra=$(orch_role_password infra) || exit 1
orch_pw_scaffolder_owner=$(orch_role_password scaffolder_owner) || exit 1
orch_pw_secret_broker_owner=$(orch_role_password secret_broker_owner) || exit 1
orch_pw_vault_owner=$(orch_role_password vault_owner) || exit 1
orch_pw_infra_owner=$(orch_role_password infra_owner) || exit 1

# The SQL goes through stdin (a here-document), never through argv. The passwords were checked
# above to hold no quote, so they are safe inside '...'.
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
    --username "${POSTGRES_USER:-postgres}" --dbname "$orch_db" <<SQL
BEGIN;

REVOKE ALL ON DATABASE "$orch_db" FROM PUBLIC;
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE ROLE scaffolder_owner LOGIN PASSWORD '$orch_pw_scaffolder_owner'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
CREATE ROLE scaffolder LOGIN PASSWORD '$orch_pw_scaffolder'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
GRANT CONNECT ON DATABASE "$orch_db" TO scaffolder_owner, scaffolder;
CREATE SCHEMA scaffolder AUTHORIZATION scaffolder_owner;
ALTER ROLE scaffolder_owner IN DATABASE "$orch_db" SET search_path = scaffolder;
ALTER ROLE scaffolder IN DATABASE "$orch_db" SET search_path = scaffolder;

CREATE ROLE secret_broker_owner LOGIN PASSWORD '$orch_pw_secret_broker_owner'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
CREATE ROLE secret_broker LOGIN PASSWORD '$orch_pw_secret_broker'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
GRANT CONNECT ON DATABASE "$orch_db" TO secret_broker_owner, secret_broker;
CREATE SCHEMA secret_broker AUTHORIZATION secret_broker_owner;
ALTER ROLE secret_broker_owner IN DATABASE "$orch_db" SET search_path = secret_broker;
ALTER ROLE secret_broker IN DATABASE "$orch_db" SET search_path = secret_broker;

CREATE ROLE vault_owner LOGIN PASSWORD '$orch_pw_vault_owner'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
CREATE ROLE vault LOGIN PASSWORD '$orch_pw_vault'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
GRANT CONNECT ON DATABASE "$orch_db" TO vault_owner, vault;
CREATE SCHEMA vault AUTHORIZATION vault_owner;
ALTER ROLE vault_owner IN DATABASE "$orch_db" SET search_path = vault;
ALTER ROLE vault IN DATABASE "$orch_db" SET search_path = vault;

CREATE ROLE infra_owner LOGIN PASSWORD '$orch_pw_infra_owner'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
CREATE ROLE infra LOGIN PASSWORD '$orch_pw_infra'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
GRANT CONNECT ON DATABASE "$orch_db" TO infra_owner, infra;
CREATE SCHEMA infra AUTHORIZATION infra_owner;
ALTER ROLE infra_owner IN DATABASE "$orch_db" SET search_path = infra;
ALTER ROLE infra IN DATABASE "$orch_db" SET search_path = infra;

COMMIT;
SQL

unset orch_pw_scaffolder orch_pw_secret_broker orch_pw_vault orch_pw_infra \
    orch_pw_scaffolder_owner orch_pw_secret_broker_owner orch_pw_vault_owner orch_pw_infra_owner \
    orch_pass orch_url \
    orch_userinfo orch_rest
echo "postgres-init: schemas scaffolder, secret_broker, vault, infra with their owner and runtime roles created in $orch_db"
