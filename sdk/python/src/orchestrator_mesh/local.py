"""A mesh started by `orchctl up` on this machine: where each service listens (the address files
it writes, so `--port 0` works) and its development PKI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ._tls import SERVICES, PathLike

__all__ = ["LocalMesh"]


class LocalMesh:
    """`orchctl up --state-dir DIR`'s mesh (default: $ORCH_STATE_DIR, else `.orchestrator`)."""

    def __init__(self, state_dir: Optional[PathLike] = None) -> None:
        self.state_dir = Path(state_dir or os.environ.get("ORCH_STATE_DIR") or ".orchestrator")

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    def target(self, service: str) -> str:
        """`host:port` of `service`'s gRPC listener, from `<state_dir>/run/<service>.json`."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
        path = self.state_dir / "run" / f"{service}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: is `orchctl up --state-dir {self.state_dir}` running?")
        addr = str(data["grpc"])
        host, _, port = addr.rpartition(":")
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
        return f"{host}:{port}"
