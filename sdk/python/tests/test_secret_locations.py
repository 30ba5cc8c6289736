"""Secret locations through the installed package, as `api`: a project's environment secret set
through the broker (the environment is created at the GitHub emulator on the way) and listed
back for that environment only; an invalid environment name refused with its field."""

from __future__ import annotations

import uuid

import grpc
import pytest

from orchestrator.common.v1 import common_pb2
from orchestrator.scaffolder.v1 import scaffolder_pb2, scaffolder_pb2_grpc
from orchestrator.secretbroker.v1 import secret_broker_pb2, secret_broker_pb2_grpc
from orchestrator_mesh import connect, decode, locations
from orchestrator_mesh.local import LocalMesh


@pytest.fixture(scope="module")
def project_id(mesh: LocalMesh) -> str:
    channel = connect("scaffolder", mesh.target("scaffolder"), pki_dir=mesh.pki_dir, identity="api")
    scaffolder = scaffolder_pb2_grpc.ScaffolderServiceStub(channel)
    created = scaffolder.CreateProject(
        scaffolder_pb2.CreateProjectRequest(
            request_id=str(uuid.uuid4()),
            name=f"py-env-{uuid.uuid4().hex[:8]}",
            user_id="u-py-env",
            template=scaffolder_pb2.PROJECT_TEMPLATE_DOCKER_SSH,
            visibility=scaffolder_pb2.REPOSITORY_VISIBILITY_PRIVATE,
        ),
        timeout=60,
    )
    assert created.project.state == scaffolder_pb2.PROJECT_STATE_READY, created.project
    return created.project.id


@pytest.fixture
def broker(mesh: LocalMesh) -> secret_broker_pb2_grpc.SecretBrokerServiceStub:
    channel = connect("secret-broker", mesh.target("secret-broker"), pki_dir=mesh.pki_dir, identity="api")
    return secret_broker_pb2_grpc.SecretBrokerServiceStub(channel)


def test_an_environment_secret_is_written_and_listed_for_its_environment_only(
    broker: secret_broker_pb2_grpc.SecretBrokerServiceStub, project_id: str
) -> None:
    written = broker.SetProjectSecrets(
        secret_broker_pb2.SetProjectSecretsRequest(
            request_id=str(uuid.uuid4()),
            project_id=project_id,
            secrets=[common_pb2.ProjectSecretValue(name="release_token", value=b"py-env-value")],
            location=locations.environment("Production"),
        ),
        timeout=60,
    )
    assert [(r.name, r.outcome) for r in written.results] == [
        ("RELEASE_TOKEN", common_pb2.SECRET_WRITE_OUTCOME_CREATED)
    ], written

    in_env = broker.ListProjectSecrets(
        secret_broker_pb2.ListProjectSecretsRequest(project_id=project_id, location=locations.environment("production")),
        timeout=10,
    )
    [ref] = in_env.secrets
    assert ref.name == "RELEASE_TOKEN"
    assert ref.presence == common_pb2.SECRET_PRESENCE_PRESENT
    assert ref.location.WhichOneof("kind") == "environment"
    assert ref.location.environment.name == "production"
    assert ref.key_id, "sealed with the environment's own public key"

    in_repo = broker.ListProjectSecrets(
        secret_broker_pb2.ListProjectSecretsRequest(project_id=project_id), timeout=10
    )
    assert "RELEASE_TOKEN" not in [s.name for s in in_repo.secrets], "not in the repository's secrets"


def test_an_invalid_environment_name_is_refused_with_its_field(
    broker: secret_broker_pb2_grpc.SecretBrokerServiceStub, project_id: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        broker.SetProjectSecrets(
            secret_broker_pb2.SetProjectSecretsRequest(
                request_id=str(uuid.uuid4()),
                project_id=project_id,
                secrets=[common_pb2.ProjectSecretValue(name="X", value=b"v")],
                location=locations.environment("prod/../main"),
            ),
            timeout=10,
        )
    err = decode(caught.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
    assert [v.field for v in err.field_violations] == ["location.environment.name"], err


def test_the_location_helpers_build_the_contracts_messages() -> None:
    org = locations.organization("selected", ["prj-1", "prj-2"])
    assert org.organization.visibility == common_pb2.ORGANIZATION_SECRET_VISIBILITY_SELECTED
    assert list(org.organization.selected_project_ids) == ["prj-1", "prj-2"]
    assert locations.dependabot().WhichOneof("kind") == "dependabot"
    assert locations.repository().WhichOneof("kind") == "repository"
    with pytest.raises(ValueError):
        locations.organization("everyone")
