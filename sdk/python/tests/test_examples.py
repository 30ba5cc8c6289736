"""The examples run, as a user runs them, against the mesh (from outside the source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator_mesh.local import LocalMesh

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("vault_put_list.py", "GetUserSecret as api: PERMISSION_DENIED reason=RPC_NOT_ALLOWED"),
        ("seed_flow.py", "OPERATION_STATE_SUCCEEDED"),
    ],
)
def test_example_runs(mesh: LocalMesh, example: str, expected: str) -> None:
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / example)],
            cwd=cwd,
            env={**os.environ, "ORCH_STATE_DIR": str(mesh.state_dir)},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout, done.stdout
