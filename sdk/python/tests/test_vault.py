"""Vault as `api` through the installed package: put and list, and refusals decoded."""

from __future__ import annotations

import uuid

import grpc
import pytest

from orchestrator.vault.v1 import vault_pb2, vault_pb2_grpc
from orchestrator_mesh import connect, decode
from orchestrator_mesh.local import LocalMesh


@pytest.fixture
def vault(mesh: LocalMesh) -> vault_pb2_grpc.VaultServiceStub:
    channel = connect("vault", mesh.target("vault"), pki_dir=mesh.pki_dir, identity="api")
    return vault_pb2_grpc.VaultServiceStub(channel)


def test_put_then_list_as_api(vault: vault_pb2_grpc.VaultServiceStub) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    for key in ("digitalocean/token", "cloudflare/token"):
        put = vault.PutUserSecret(
            vault_pb2.PutUserSecretRequest(request_id=str(uuid.uuid4()), user_id=user, key=key, value=b"v1"),
            timeout=10,
        )
        assert put.secret.key == key and put.secret.current_version == 1
    listed = vault.ListUserSecrets(vault_pb2.ListUserSecretsRequest(user_id=user), timeout=10)
    assert sorted(s.key for s in listed.secrets) == ["cloudflare/token", "digitalocean/token"]


def test_a_refused_call_is_decoded_to_its_reason(vault: vault_pb2_grpc.VaultServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        vault.GetUserSecret(vault_pb2.GetUserSecretRequest(user_id="u-1", key="k", project_id="p"), timeout=10)
    err = decode(caught.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "RPC_NOT_ALLOWED"
    assert err.metadata["caller"] == "spiffe://orchestrator.local/api"
    assert err.metadata["method"] == "/orchestrator.vault.v1.VaultService/GetUserSecret"


def test_field_violations_are_decoded(vault: vault_pb2_grpc.VaultServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        vault.PutUserSecret(
            vault_pb2.PutUserSecretRequest(request_id=str(uuid.uuid4()), user_id="u-1", key="no spaces!", value=b"v"),
            timeout=10,
        )
    err = decode(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.field_violations] == ["key"], err
    assert err.field_violations[0].description
