#!/usr/bin/env bash
# Builds the Python package and installs it where its tests run (scripts/test runs this after
# sdk/generate.sh; crates/e2e/tests/python_sdk.rs then runs its pytest suite against `orchctl up`):
#   1. the contracts' version check (sdk/check-version.sh),
#   2. the wheel: sdk/python/dist/orchestrator_mesh-<version>-py3-none-any.whl (hatchling),
#   3. a venv of its own, ${ORCH_SDK_WHEEL_VENV:-$HOME/.cache/orchestrator/sdk-wheel-venv}, where
#      the wheel is installed by pip like a user would (plus pytest and the typing stubs),
#   4. mypy --strict on the package's source, then on examples/ and tests/ against the INSTALLED
#      wheel.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="$(dirname "$here")"
py="${ORCH_SDK_VENV:-$HOME/.cache/orchestrator/sdk-venv}/bin/python"
wheel_venv="${ORCH_SDK_WHEEL_VENV:-$HOME/.cache/orchestrator/sdk-wheel-venv}"

[ -d "$here/gen/orchestrator" ] || { echo "error: run sdk/generate.sh first" >&2; exit 1; }
"$sdk/check-version.sh"

rm -rf "$here/dist"
"$py" -m build --wheel --no-isolation --outdir "$here/dist" "$here" >/dev/null
whl="$(ls "$here"/dist/orchestrator_mesh-*.whl)"
echo "python: built $(basename "$whl")"
# The wheel holds the generated code and its stubs, not just the hand-written layer.
"$py" - "$whl" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["orchestrator_mesh/__init__.py", "orchestrator_mesh/py.typed",
        "orchestrator/vault/v1/vault_pb2.py", "orchestrator/vault/v1/vault_pb2.pyi",
        "orchestrator/vault/v1/vault_pb2_grpc.py", "orchestrator/vault/v1/vault_pb2_grpc.pyi",
        "orchestrator/vault/v1/py.typed"]
missing = [n for n in need if n not in names]
sys.exit(f"the wheel lacks {missing}") if missing else None
PY

if [ ! -x "$wheel_venv/bin/python" ]; then
  echo "creating venv $wheel_venv"
  python3 -m venv "$wheel_venv"
fi
# The wheel as a user installs it (its dependencies from PyPI), and what its tests need.
"$wheel_venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$whl"
"$wheel_venv/bin/pip" install --quiet --disable-pip-version-check "$whl[typing]" \
  -r "$here/test-requirements.txt"

# The hand-written layer itself, from the tree (with the generated stubs beside it).
(cd "$here" && MYPYPATH="$here/gen" "$wheel_venv/bin/mypy" --strict --no-incremental \
  --python-executable "$wheel_venv/bin/python" src/orchestrator_mesh)
# Type-check against the installed package, from outside the source tree.
(cd "$here/examples" && MYPYPATH= "$wheel_venv/bin/mypy" --strict --no-incremental \
  --python-executable "$wheel_venv/bin/python" . "$here/tests" >/dev/null) ||
  { (cd "$here/examples" && "$wheel_venv/bin/mypy" --strict --no-incremental \
    --python-executable "$wheel_venv/bin/python" . "$here/tests"); exit 1; }
echo "python: mypy --strict clean on examples/ and tests/ (against the installed wheel)"
echo "python: installed in $wheel_venv (tests: crates/e2e/tests/python_sdk.rs, or see sdk/README.md)"
