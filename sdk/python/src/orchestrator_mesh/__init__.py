"""Client of the orchestrator mesh.

    from orchestrator_mesh import connect, errors
    from orchestrator.vault.v1 import vault_pb2, vault_pb2_grpc

    channel = connect("vault", "127.0.0.1:50053", pki_dir=".orchestrator/pki", identity="api")
    vault = vault_pb2_grpc.VaultServiceStub(channel)

`connect` returns a `grpc.Channel` over mTLS whose server was checked to be the named service
(SPIFFE ID, see `_tls`); `orchestrator_mesh.aio.connect` is the `grpc.aio` variant;
`errors.decode(rpc_error)` gives the ErrorInfo reason, metadata and field violations.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Optional, Sequence

import grpc

from . import errors, locations
from ._options import ChannelOption, Keepalive, RetryPolicy, channel_options
from ._tls import (
    DEFAULT_TRUST_DOMAIN,
    SERVICES,
    Credentials,
    PathLike,
    load_credentials,
    spiffe_id,
    verify_server_identity,
)
from .errors import DecodedError, FieldViolation, IdentityMismatch, MeshError, decode

try:
    __version__ = version("orchestrator-mesh")
except PackageNotFoundError:  # used from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "SERVICES",
    "Credentials",
    "DecodedError",
    "FieldViolation",
    "IdentityMismatch",
    "Keepalive",
    "MeshError",
    "RetryPolicy",
    "connect",
    "decode",
    "errors",
    "locations",
    "prepare",
    "spiffe_id",
]


def prepare(
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
) -> tuple[grpc.ChannelCredentials, list[ChannelOption]]:
    """Loads the credentials, checks the server's identity once, and returns what a channel
    needs (shared by `connect` and `aio.connect`)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    creds = load_credentials(pki_dir=pki_dir, identity=identity, cert=cert, key=key, ca=ca)
    verify_server_identity(target, service, trust_domain, creds, verify_timeout)
    channel_creds = grpc.ssl_channel_credentials(
        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert
    )
    return channel_creds, channel_options(service, keepalive, retry, options)


def connect(
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
) -> grpc.Channel:
    """An mTLS channel to `service` ("scaffolder", "secret-broker", "vault" or "infra") at
    `target` ("host:port"), as `identity` (its certificate and key from `pki_dir`, or `cert`/`key`;
    `identity=None` without cert/key: no client certificate, which the services refuse).

    Raises IdentityMismatch when the server is not `spiffe://<trust_domain>/<service>`, OSError when
    the target cannot be reached over TLS, ValueError/OSError for missing or unreadable files.
    """
    channel_creds, opts = prepare(
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
    return grpc.secure_channel(target, channel_creds, options=opts)
