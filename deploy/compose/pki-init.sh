#!/bin/sh
# The compose `pki` one-shot (runs in the mesh image as root, no network).
#
# 1. `orchctl pki init` issues the development CA and one certificate per identity into the
#    pki-ca volume (mounted at /pki/all). It keeps what already exists, so re-running is safe.
#    That volume holds the CA key and every identity's key: only this job ever mounts it.
# 2. Each identity gets its own volume (mounted here at /out/<identity>, and read-only at /pki in
#    that one service's container) holding exactly three files: ca.crt, <identity>.crt and
#    <identity>.key. A compromised vault container therefore holds the vault key and no other.
#    Files are owned by the image's `orchestrator` user (the services run as it): keys 0600,
#    certificates 0644, the directory 0500. Each file is replaced atomically (copy, then rename),
#    so a running service that reloads its certificate never reads half a file.
set -eu

trust_domain=${ORCH_TRUST_DOMAIN:-orchestrator.local}
uid=$(id -u orchestrator)
gid=$(id -g orchestrator)

orchctl pki init --dir /pki/all --trust-domain "$trust_domain"

# The identities that get a volume: the four services, operator for `orchctl health`, and api
# for the orchctl tool's project, secrets and infra commands.
for id in scaffolder secret-broker vault infra operator api; do
    out=/out/$id
    if [ ! -d "$out" ]; then
        echo "pki-init: $out is not mounted (add the pki-$id volume to the pki service)" >&2
        exit 1
    fi
    for file in ca.crt "$id.crt" "$id.key"; do
        case $file in *.key) mode=0600 ;; *) mode=0644 ;; esac
        tmp=$out/.$file.tmp
        rm -f "$tmp"
        cp /pki/all/"$file" "$tmp"
        chmod "$mode" "$tmp"
        chown "$uid:$gid" "$tmp"
        mv -f "$tmp" "$out/$file"
    done
    # Nothing else may sit in an identity's volume (say, a key left by an older layout).
    find "$out" -mindepth 1 -maxdepth 1 ! -name ca.crt ! -name "$id.crt" ! -name "$id.key" \
        -exec rm -rf {} +
    chown "$uid:$gid" "$out"
    chmod 0500 "$out"
    echo "pki-init: $id gets ca.crt, $id.crt, $id.key"
done
