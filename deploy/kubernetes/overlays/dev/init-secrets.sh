#!/bin/sh
# Creates the dev overlay's secret files in deploy/kubernetes/overlays/dev/secrets/ (git-ignored),
# the same set docker-compose uses (deploy/compose/init-secrets.sh): one DATABASE_URL per service
# (postgres://<role>:<password>@postgres:5432/orchestrator; the in-cluster PostgreSQL creates each
# role from it), one AUDIT_KEY per service, the vault master key, infra's SSH key, and stand-ins
# for the GitHub App key and the provider tokens. Existing files are kept.
#
#   deploy/kubernetes/overlays/dev/init-secrets.sh [DIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../../../compose/init-secrets.sh" "${1:-$here/secrets}"
