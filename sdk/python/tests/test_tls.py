"""The channel's TLS: no client certificate is refused; a server that is not the named service is
refused, both by connect()'s SPIFFE check and by gRPC's own name check on later connections."""

from __future__ import annotations

import grpc
import pytest

from orchestrator.vault.v1 import vault_pb2, vault_pb2_grpc
from orchestrator_mesh import IdentityMismatch, Keepalive, connect
from orchestrator_mesh._options import channel_options
from orchestrator_mesh.local import LocalMesh


def test_a_channel_without_a_certificate_is_refused(mesh: LocalMesh) -> None:
    channel = connect("vault", mesh.target("vault"), ca=mesh.pki_dir / "ca.crt", identity=None)
    vault = vault_pb2_grpc.VaultServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        vault.ListUserSecrets(vault_pb2.ListUserSecretsRequest(user_id="u-1"), timeout=10)
    # Refused in the handshake: the call never reaches the vault.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_server_with_another_identity_is_refused_by_connect(mesh: LocalMesh) -> None:
    # infra's address, presented as the vault: its certificate proves spiffe://.../infra.
    with pytest.raises(IdentityMismatch) as caught:
        connect("vault", mesh.target("infra"), pki_dir=mesh.pki_dir, identity="api")
    assert caught.value.expected == "spiffe://orchestrator.local/vault"
    assert caught.value.found == ["spiffe://orchestrator.local/infra"]


def test_a_server_with_another_identity_is_refused_on_reconnection(mesh: LocalMesh) -> None:
    # What a channel uses after connect(): gRPC verifies the DNS name `vault`, which only the
    # vault's certificate carries, so a swapped server at the same address is refused too.
    pki = mesh.pki_dir
    creds = grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(), (pki / "api.key").read_bytes(), (pki / "api.crt").read_bytes()
    )
    opts = channel_options("vault", Keepalive(), None, ())
    channel = grpc.secure_channel(mesh.target("infra"), creds, options=opts)
    vault = vault_pb2_grpc.VaultServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        vault.ListUserSecrets(vault_pb2.ListUserSecretsRequest(user_id="u-1"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
