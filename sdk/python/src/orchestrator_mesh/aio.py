"""The `grpc.aio` variant of `orchestrator_mesh.connect` (same arguments, same checks)."""

from __future__ import annotations

import asyncio
from typing import Optional, Sequence

from grpc import aio

from . import prepare
from ._options import ChannelOption, Keepalive, RetryPolicy
from ._tls import DEFAULT_TRUST_DOMAIN, PathLike

__all__ = ["connect"]


async def connect(
    service: str,
    target: str,
    *,
    pki_dir: Optional[PathLike] = None,
    identity: Optional[str] = "api",
    cert: Optional[PathLike] = None,
    key: Optional[PathLike] = None,
    ca: Optional[PathLike] = None,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    keepalive: Optional[Keepalive] = Keepalive(),
    retry: Optional[RetryPolicy] = None,
    options: Sequence[ChannelOption] = (),
    verify_timeout: float = 10.0,
) -> aio.Channel:
    """An mTLS `grpc.aio.Channel` to `service` at `target`; see `orchestrator_mesh.connect`.
    The one identity-checking handshake runs in a worker thread."""
    channel_creds, opts = await asyncio.to_thread(
        lambda: prepare(
            service,
            target,
            pki_dir=pki_dir,
            identity=identity,
            cert=cert,
            key=key,
            ca=ca,
            trust_domain=trust_domain,
            keepalive=keepalive,
            retry=retry,
            options=options,
            verify_timeout=verify_timeout,
        )
    )
    return aio.secure_channel(target, channel_creds, options=opts)
