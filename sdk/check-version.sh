#!/usr/bin/env bash
# The SDKs' version (sdk/VERSION, used by both packages) follows the contracts: sdk/CONTRACTS
# records the version and a digest of proto/**. When proto/ changes, this fails until sdk/VERSION
# is bumped (minor for additive changes, the only kind `buf breaking` lets through; the major
# only with a new package version such as v2) and `sdk/check-version.sh --update` is run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(tr -d '[:space:]' <"$root/sdk/VERSION")"
digest="$(cd "$root" && find proto -name '*.proto' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
lock="$root/sdk/CONTRACTS"
if [ "${1:-}" = "--update" ]; then
  printf '%s %s\n' "$version" "$digest" >"$lock"
  echo "sdk/CONTRACTS: $version $digest"
  exit 0
fi
read -r locked_version locked_digest <"$lock"
if [ "$digest" != "$locked_digest" ]; then
  if [ "$version" = "$locked_version" ]; then
    echo "error: proto/ changed since SDK version $version: bump sdk/VERSION, then run sdk/check-version.sh --update" >&2
    exit 1
  fi
  echo "error: sdk/CONTRACTS is stale: run sdk/check-version.sh --update" >&2
  exit 1
fi
[ "$version" = "$locked_version" ] || { echo "error: sdk/VERSION $version but sdk/CONTRACTS records $locked_version: run sdk/check-version.sh --update" >&2; exit 1; }
echo "sdk: version $version matches the contracts"
