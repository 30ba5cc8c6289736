"""The seed's flow, as `api`: create a project with an initial secret, provision a server for it
and follow the operation to the end (grpc.aio).

    orchctl up --state-dir .orchestrator --port 0 --admin-port 0     # in another terminal
    ORCH_STATE_DIR=.orchestrator python seed_flow.py
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from orchestrator.common.v1 import common_pb2
from orchestrator.infra.v1 import infra_pb2, infra_pb2_grpc
from orchestrator.scaffolder.v1 import scaffolder_pb2, scaffolder_pb2_grpc
from orchestrator_mesh import aio
from orchestrator_mesh.local import LocalMesh


async def create_project(mesh: LocalMesh, name: str, user: str) -> scaffolder_pb2.Project:
    async with await aio.connect("scaffolder", mesh.target("scaffolder"), pki_dir=mesh.pki_dir) as ch:
        scaffolder = scaffolder_pb2_grpc.ScaffolderServiceStub(ch)
        bot_token = common_pb2.SecretTarget(github_secret=common_pb2.GitHubSecretTarget(name="BOT_TOKEN"))
        created = await scaffolder.CreateProject(
            scaffolder_pb2.CreateProjectRequest(
                request_id=str(uuid.uuid4()),
                name=name,
                user_id=user,
                template=scaffolder_pb2.PROJECT_TEMPLATE_DOCKER_SSH,
                visibility=scaffolder_pb2.REPOSITORY_VISIBILITY_PRIVATE,
                secrets_ref=common_pb2.SecretsRef(entries={"bot_token": bot_token}),
                initial_secrets=[common_pb2.ProjectSecretValue(name="BOT_TOKEN", value=b"123:example")],
            ),
            timeout=60,
        )
        for r in created.initial_secret_results:
            print(f"  secret {r.name}: {common_pb2.SecretWriteOutcome.Name(r.outcome)}")
        return created.project


async def provision(mesh: LocalMesh, project_id: str, hostname: str) -> infra_pb2.Operation:
    async with await aio.connect("infra", mesh.target("infra"), pki_dir=mesh.pki_dir) as ch:
        infra = infra_pb2_grpc.InfraServiceStub(ch)
        accepted = await infra.ProvisionServer(
            infra_pb2.ProvisionServerRequest(
                request_id=str(uuid.uuid4()),
                project_id=project_id,
                provider=infra_pb2.PROVIDER_DIGITALOCEAN,
                digitalocean=infra_pb2.DigitalOceanServerSpec(
                    region="fra1", size="s-1vcpu-1gb", image="ubuntu-24-04-x64"
                ),
                hostname=hostname,
            ),
            timeout=30,
        )
        op = accepted.operation
        stream = infra.WatchOperation(infra_pb2.WatchOperationRequest(operation_id=op.id), timeout=300)
        async for item in stream:
            op = item.operation
            done = sum(s.state in (infra_pb2.OPERATION_STEP_STATE_DONE, infra_pb2.OPERATION_STEP_STATE_SKIPPED) for s in op.steps)
            print(f"  [{done}/{len(op.steps)}] {infra_pb2.OperationState.Name(op.state)} {op.status_message}")
            if op.state in (infra_pb2.OPERATION_STATE_SUCCEEDED, infra_pb2.OPERATION_STATE_FAILED):
                break
        return op


async def main() -> int:
    mesh = LocalMesh()
    suffix = uuid.uuid4().hex[:8]
    project = await create_project(mesh, f"seed-{suffix}", "u-seed")
    print(f"project {project.id} {scaffolder_pb2.ProjectState.Name(project.state)}")
    op = await provision(mesh, project.id, f"seed-{suffix}.orchestrator.test")
    print(f"operation {op.id}: {infra_pb2.OperationState.Name(op.state)}")
    return 0 if op.state == infra_pb2.OPERATION_STATE_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
