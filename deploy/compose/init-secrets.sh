#!/bin/sh
# Creates the secret files docker-compose.yml mounts, in deploy/compose/secrets/ (git-ignored).
# An existing file is never overwritten: run it again after deleting one to make a new one.
#
#   deploy/compose/init-secrets.sh            # from the repository root, or from anywhere
#   deploy/compose/init-secrets.sh DIR        # into DIR instead (the Kubernetes dev overlay)
#
# Generated here: the Postgres superuser password, one DATABASE_URL and one
# DATABASE_MIGRATION_URL (the schema's owner) per service (each with a random password; Postgres
# creates the roles from them), one AUDIT_KEY per service, the vault master key,
# and a fresh SSH key for infra. External credentials (GitHub App key, provider tokens) get a
# development stand-in that no real API accepts: replace them before talking to the real ones.
# Needs openssl; ssh-keygen for the SSH key.
set -eu

dir=${1:-$(cd "$(dirname "$0")" && pwd)/secrets}
mkdir -p "$dir"
# The directory keeps other host users out; the files must be readable by the containers' users
# (uid 10001 for the services, 999 for Postgres), and compose mounts file secrets with the
# host file's owner and mode, hence 0644 files inside a 0700 directory.
chmod 0700 "$dir"
umask 077

created=""
# put NAME: writes stdin to secrets/NAME unless it exists.
put() {
    if [ -e "$dir/$1" ]; then
        cat > /dev/null
        echo "kept     secrets/$1"
        return 0
    fi
    cat > "$dir/$1.tmp"
    chmod 0644 "$dir/$1.tmp"
    mv "$dir/$1.tmp" "$dir/$1"
    echo "created  secrets/$1"
    created="$created $1"
}

# URL-safe random text (hex): goes into postgres:// URLs without percent-encoding.
password() { openssl rand -hex 32; }
# Base64 of 32 random bytes: AES-256 / HMAC-SHA-256 key material.
key32() { openssl rand -base64 32; }

password | put postgres_password
for role in scaffolder secret_broker vault infra; do
    printf 'postgres://%s:%s@postgres:5432/orchestrator\n' "$role" "$(password)" \
        | put "${role}_database_url"
    printf 'postgres://%s_owner:%s@postgres:5432/orchestrator\n' "$role" "$(password)" \
        | put "${role}_owner_database_url"
    key32 | put "${role}_audit_key"
done

# The vault keyring: `id:base64` entries; one entry to start with.
printf 'k1:%s\n' "$(key32)" | put vault_master_key

# A stand-in GitHub App key (a real RSA key GitHub does not know): replace it with the PEM
# downloaded from your GitHub App's settings to talk to GitHub.
if [ ! -e "$dir/github_app_private_key" ]; then
    # PKCS#1 (BEGIN RSA PRIVATE KEY), the format GitHub hands out; OpenSSL 1.1 writes it by
    # default, OpenSSL 3 needs -traditional.
    { openssl genrsa -traditional 2048 2>/dev/null || openssl genrsa 2048 2>/dev/null; } \
        | put github_app_private_key
else
    put github_app_private_key < /dev/null
fi
# Its public half, for the GitHub emulator of docker-compose.dev.yml (not a secret). Made again
# whenever the private key is newer, so a replaced key and its emulator stay a pair.
if [ ! -e "$dir/github_app_public_key" ] || [ "$dir/github_app_private_key" -nt "$dir/github_app_public_key" ]; then
    rm -f "$dir/github_app_public_key"
    openssl rsa -in "$dir/github_app_private_key" -pubout 2>/dev/null | put github_app_public_key
fi

# Provider tokens: stand-ins (the emulators of docker-compose.dev.yml accept them); replace them
# with real tokens. The Cloudflare one is shaped as Cloudflare's are (40 of [A-Za-z0-9_-]): its
# API, and the emulator, refuse another shape.
for name in digitalocean_token time4vps_password; do
    printf 'dev-placeholder-%s\n' "$(openssl rand -hex 16)" | put "$name"
done
openssl rand -hex 20 | put cloudflare_api_token

# The orchestrator's own SSH key (OpenSSH format, Ed25519).
if [ ! -e "$dir/orchestrator_ssh_private_key" ]; then
    if command -v ssh-keygen > /dev/null 2>&1; then
        tmp=$(mktemp -d)
        ssh-keygen -q -t ed25519 -N '' -C orchestrator -f "$tmp/key"
        put orchestrator_ssh_private_key < "$tmp/key"
        echo "         (public key: $(cat "$tmp/key.pub"))"
        rm -rf "$tmp"
    else
        echo "ssh-keygen not found: create secrets/orchestrator_ssh_private_key yourself" >&2
        echo "(ssh-keygen -t ed25519 -N '' -f <file>; then chmod 0644 it)" >&2
        exit 1
    fi
else
    put orchestrator_ssh_private_key < /dev/null
fi

if [ -n "$created" ]; then
    echo "Done. Stand-ins to replace for real APIs: github_app_private_key, digitalocean_token,"
    echo "time4vps_password, cloudflare_api_token (see deploy/compose/README.md)."
fi
