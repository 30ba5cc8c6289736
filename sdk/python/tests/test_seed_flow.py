"""The seed's flow with the grpc.aio variant, as `api`: a project created with an initial secret,
a server provisioned for it, the operation stream followed to its end."""

from __future__ import annotations

import uuid

import grpc
import pytest

from orchestrator.common.v1 import common_pb2
from orchestrator.infra.v1 import infra_pb2, infra_pb2_grpc
from orchestrator.scaffolder.v1 import scaffolder_pb2, scaffolder_pb2_grpc
from orchestrator.vault.v1 import vault_pb2, vault_pb2_grpc
from orchestrator_mesh import aio, decode
from orchestrator_mesh.local import LocalMesh

TERMINAL = (infra_pb2.OPERATION_STATE_SUCCEEDED, infra_pb2.OPERATION_STATE_FAILED)


@pytest.mark.asyncio
async def test_create_project_provision_and_watch_to_done(mesh: LocalMesh) -> None:
    suffix = uuid.uuid4().hex[:8]
    async with await aio.connect("scaffolder", mesh.target("scaffolder"), pki_dir=mesh.pki_dir) as ch:
        scaffolder = scaffolder_pb2_grpc.ScaffolderServiceStub(ch)
        bot = common_pb2.SecretTarget(github_secret=common_pb2.GitHubSecretTarget(name="BOT_TOKEN"))
        created = await scaffolder.CreateProject(
            scaffolder_pb2.CreateProjectRequest(
                request_id=str(uuid.uuid4()),
                name=f"py-{suffix}",
                user_id="u-py",
                template=scaffolder_pb2.PROJECT_TEMPLATE_DOCKER_SSH,
                visibility=scaffolder_pb2.REPOSITORY_VISIBILITY_PRIVATE,
                secrets_ref=common_pb2.SecretsRef(entries={"bot_token": bot}),
                initial_secrets=[common_pb2.ProjectSecretValue(name="BOT_TOKEN", value=b"123:abc")],
            ),
            timeout=60,
        )
        project = created.project
        assert project.state == scaffolder_pb2.PROJECT_STATE_READY, project
        assert [r.name for r in created.initial_secret_results] == ["BOT_TOKEN"]

    async with await aio.connect("infra", mesh.target("infra"), pki_dir=mesh.pki_dir) as ch:
        infra = infra_pb2_grpc.InfraServiceStub(ch)
        accepted = await infra.ProvisionServer(
            infra_pb2.ProvisionServerRequest(
                request_id=str(uuid.uuid4()),
                project_id=project.id,
                provider=infra_pb2.PROVIDER_DIGITALOCEAN,
                digitalocean=infra_pb2.DigitalOceanServerSpec(region="fra1", size="s-1vcpu-1gb", image="ubuntu-24-04-x64"),
                hostname=f"py-{suffix}.orchestrator.test",
            ),
            timeout=30,
        )
        seen = []
        op = accepted.operation
        async for item in infra.WatchOperation(infra_pb2.WatchOperationRequest(operation_id=op.id), timeout=240):
            op = item.operation
            seen.append(op.state)
            if op.state in TERMINAL:
                break
        assert op.state == infra_pb2.OPERATION_STATE_SUCCEEDED, op
        assert all(s.state in (infra_pb2.OPERATION_STEP_STATE_DONE, infra_pb2.OPERATION_STEP_STATE_SKIPPED) for s in op.steps)
        server = await infra.GetServer(infra_pb2.GetServerRequest(server_id=op.server_id), timeout=10)
        assert server.server.hostname == f"py-{suffix}.orchestrator.test"


@pytest.mark.asyncio
async def test_aio_refusals_decode_too(mesh: LocalMesh) -> None:
    async with await aio.connect("vault", mesh.target("vault"), pki_dir=mesh.pki_dir) as ch:
        vault = vault_pb2_grpc.VaultServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await vault.GetUserSecret(vault_pb2.GetUserSecretRequest(user_id="u-1", key="k"), timeout=10)
    err = decode(caught.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED, err
    assert err.reason == "RPC_NOT_ALLOWED", err
    assert err.metadata["caller"] == "spiffe://orchestrator.local/api", err
