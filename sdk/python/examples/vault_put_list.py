"""Puts a user's secret into the vault and lists the user's keys, as `api`.

    orchctl up --state-dir .orchestrator --port 0 --admin-port 0     # in another terminal
    ORCH_STATE_DIR=.orchestrator python vault_put_list.py [user]
"""

from __future__ import annotations

import sys
import uuid

import grpc

from orchestrator.vault.v1 import vault_pb2, vault_pb2_grpc
from orchestrator_mesh import connect, decode
from orchestrator_mesh.local import LocalMesh


def main(user: str) -> int:
    mesh = LocalMesh()
    with connect("vault", mesh.target("vault"), pki_dir=mesh.pki_dir, identity="api") as channel:
        vault = vault_pb2_grpc.VaultServiceStub(channel)
        put = vault.PutUserSecret(
            vault_pb2.PutUserSecretRequest(
                request_id=str(uuid.uuid4()), user_id=user, key="digitalocean/token", value=b"dop_v1_example"
            ),
            timeout=10,
        )
        print(f"put {put.secret.key} version {put.secret.current_version}")
        listed = vault.ListUserSecrets(vault_pb2.ListUserSecretsRequest(user_id=user), timeout=10)
        for s in listed.secrets:
            print(f"  {s.key:<24} v{s.current_version}  updated {s.update_time.ToJsonString()}")
        # The vault never serves a plaintext to `api`: the refusal, decoded.
        try:
            vault.GetUserSecret(vault_pb2.GetUserSecretRequest(user_id=user, key="digitalocean/token"), timeout=10)
        except grpc.RpcError as e:
            err = decode(e)
            print(f"GetUserSecret as api: {err.code.name} reason={err.reason} caller={err.metadata.get('caller')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "u-example"))
