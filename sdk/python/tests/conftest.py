"""The mesh the tests talk to: `orchctl up --port 0` started once per session, or one already
running (ORCH_STATE_DIR pointing at its state folder).

  ORCH_ORCHCTL   the orchctl binary (its folder must hold the services and emulators)
  ORCH_POLICY    the policy file (default: config/policy.toml of this checkout)
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator_mesh.local import LocalMesh

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 120.0


@pytest.fixture(scope="session")
def mesh() -> Iterator[LocalMesh]:
    running = os.environ.get("ORCH_STATE_DIR")
    if running:
        yield LocalMesh(running)
        return
    orchctl = os.environ.get("ORCH_ORCHCTL")
    if not orchctl:
        pytest.fail("set ORCH_ORCHCTL (an orchctl binary) or ORCH_STATE_DIR (a running mesh)")
    policy = os.environ.get("ORCH_POLICY", str(REPO / "config/policy.toml"))
    with tempfile.TemporaryDirectory(prefix="orch-pytest-") as state:
        proc = subprocess.Popen(
            [orchctl, "up", "--no-build", "--port", "0", "--admin-port", "0",
             "--state-dir", state, "--policy", policy,
             "--bin-dir", str(Path(orchctl).parent)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("Press Ctrl-C"):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("orchctl up did not come up:\n" + "".join(lines[-60:]))
        try:
            yield LocalMesh(state)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
