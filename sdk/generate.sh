#!/usr/bin/env bash
# Generates the Python and TypeScript SDKs from proto/ (see sdk/README.md). Idempotent; works on a
# fresh clone with python3 (3.9+), node (20+) and npm; needs only the PyPI and npm registries.
#   ORCH_SDK_VENV  Python venv for grpcio-tools and the smoke test
#                  (default: $HOME/.cache/orchestrator/sdk-venv)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ORCH_SDK_VENV="${ORCH_SDK_VENV:-$HOME/.cache/orchestrator/sdk-venv}"
py="$ORCH_SDK_VENV/bin/python"
req="$root/sdk/python/requirements.txt"
ts="$root/sdk/typescript"

# (a) Python venv with grpcio-tools (protoc + python/pyi/grpc_python generators) and the runtime.
if [ ! -x "$py" ]; then
  echo "creating venv $ORCH_SDK_VENV"
  python3 -m venv "$ORCH_SDK_VENV"
fi
stamp="$ORCH_SDK_VENV/.orchestrator-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing $req"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
fi

# (b) TypeScript plugin (and pinned buf, tsc) from sdk/typescript/package-lock.json.
if [ ! -x "$ts/node_modules/.bin/protoc-gen-es" ]; then
  echo "installing npm devDependencies in $ts"
  (cd "$ts" && npm install --no-audit --no-fund --loglevel=error)
fi

# (c) buf generate (local plugins only, see buf.gen.yaml). Prefer the pinned buf from npm.
buf="$ts/node_modules/.bin/buf"
[ -x "$buf" ] || buf="$(command -v buf)" || { echo "error: buf not found" >&2; exit 1; }
echo "buf generate ($("$buf" --version), $buf)"
(cd "$root" && "$buf" generate && "$buf" generate --template sdk/typescript/buf.gen.rpc.yaml)
# PEP 561 for a namespace package: a py.typed marker in every folder of the generated tree, so
# mypy uses the .pyi stubs of an installed wheel (sdk/python/pyproject.toml force-includes gen/).
find "$root/sdk/python/gen/orchestrator" -type d -exec touch {}/py.typed \;

# (d) Cheap checks: every generated Python module imports; the TypeScript output type-checks.
"$py" - "$root/sdk/python/gen" <<'PY'
import importlib, pathlib, sys
gen = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(gen))
mods = sorted(".".join(p.relative_to(gen).with_suffix("").parts) for p in gen.rglob("*.py"))
for m in mods:
    importlib.import_module(m)
print(f"python: {len(mods)} generated modules import fine")
PY
(cd "$ts" && ./node_modules/.bin/tsc --noEmit -p .)
echo "typescript: gen/ and src/ type-check (tsc $("$ts/node_modules/.bin/tsc" --version | awk '{print $2}'))"

cat <<MSG
outputs:
  python:     $root/sdk/python/gen      (put it on sys.path / PYTHONPATH)
  typescript: $root/sdk/typescript/gen  (imports @bufbuild/protobuf)
python interpreter: $py
smoke test: ORCH_TARGET=host:port ORCH_CA=ca.crt ORCH_CERT=api.crt ORCH_KEY=api.key \\
  $py $root/sdk/python/smoke_test.py
MSG
