"""mTLS material and the server identity check shared by the sync and grpc.aio channels.

The rule is the Rust clients' (crates/mesh `SpiffeServerVerifier`): the server's chain must verify
against the mesh CA, and its certificate must carry exactly one URI SAN, equal to
`spiffe://<trust-domain>/<service>`.

gRPC Python exposes no peer certificate on the client side, so the check runs in two layers:
- on `connect()`: one TLS 1.3 handshake (with the same CA and client certificate) to the target,
  whose certificate is checked against the rule above; a mismatch raises `IdentityMismatch` and no
  channel is returned;
- on every (re)connection of the channel afterwards: gRPC itself verifies the chain and the DNS SAN
  `<service>` (`grpc.ssl_target_name_override`); the mesh CA issues `<service>` as a DNS SAN only
  on that service's certificate (beside `localhost`).
"""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import IdentityMismatch

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_TRUST_DOMAIN = "orchestrator.local"
SERVICES = ("scaffolder", "secret-broker", "vault", "infra")


@dataclass(frozen=True)
class Credentials:
    """PEM bytes: the mesh CA, and the caller's certificate and key (None: no client certificate,
    which every service refuses; useful only to show that)."""

    ca: bytes
    cert: Optional[bytes]
    key: Optional[bytes]
    ca_path: Path
    cert_path: Optional[Path]
    key_path: Optional[Path]


def load_credentials(
    *,
    pki_dir: Optional[PathLike],
    identity: Optional[str],
    cert: Optional[PathLike],
    key: Optional[PathLike],
    ca: Optional[PathLike],
) -> Credentials:
    """`pki_dir` (the folder `orchctl up` writes: ca.crt, <identity>.crt, <identity>.key) or explicit
    files; explicit files win over the folder's."""
    base = Path(pki_dir) if pki_dir is not None else None
    ca_path = Path(ca) if ca is not None else (base / "ca.crt" if base else None)
    if ca_path is None:
        raise ValueError("the mesh CA is required: pass pki_dir= or ca=")
    cert_path = Path(cert) if cert is not None else None
    key_path = Path(key) if key is not None else None
    if base is not None and identity is not None:
        cert_path = cert_path or base / f"{identity}.crt"
        key_path = key_path or base / f"{identity}.key"
    if (cert_path is None) != (key_path is None):
        raise ValueError("cert= and key= go together")
    return Credentials(
        ca=ca_path.read_bytes(),
        cert=cert_path.read_bytes() if cert_path else None,
        key=key_path.read_bytes() if key_path else None,
        ca_path=ca_path,
        cert_path=cert_path,
        key_path=key_path,
    )


def spiffe_id(trust_domain: str, service: str) -> str:
    return f"spiffe://{trust_domain}/{service}"


def split_target(target: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"target {target!r}: expected host:port")
    return host.strip("[]"), int(port)


def verify_server_identity(
    target: str,
    service: str,
    trust_domain: str,
    creds: Credentials,
    timeout: float,
) -> str:
    """One TLS handshake to `target`; returns the server's SPIFFE ID, or raises IdentityMismatch
    (the certificate is not the expected service's) or OSError (cannot connect / TLS failed)."""
    expected = spiffe_id(trust_domain, service)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(creds.ca_path))
    # Hostname check off here: the identity rule below is the check (as in the Rust verifier);
    # gRPC checks the DNS SAN `<service>` on the channel's own connections.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if creds.cert_path is not None and creds.key_path is not None:
        ctx.load_cert_chain(str(creds.cert_path), str(creds.key_path))
    ctx.set_alpn_protocols(["h2"])
    host, port = split_target(target)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=service) as tls:
            peer = tls.getpeercert()
    sans = peer.get("subjectAltName", ()) if peer else ()
    uris = [str(entry[1]) for entry in sans if entry[0] == "URI"]
    if len(uris) != 1:
        raise IdentityMismatch(expected=expected, found=uris)
    if uris[0] != expected:
        raise IdentityMismatch(expected=expected, found=uris)
    return uris[0]
