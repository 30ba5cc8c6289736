#!/usr/bin/env bash
# protoc for `buf generate` (buf.gen.yaml `protoc_path`): grpcio-tools' bundled protoc, which has
# the python, pyi and grpc_python generators built in. Uses the SDK venv's interpreter when it
# exists (see sdk/generate.sh), else `python3` from PATH (which then needs grpcio-tools installed).
set -euo pipefail
py="${ORCH_SDK_VENV:-$HOME/.cache/orchestrator/sdk-venv}/bin/python"
[ -x "$py" ] || py=python3
exec "$py" -m grpc_tools.protoc "$@"
