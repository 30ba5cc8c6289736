"""Where a GitHub secret is kept, for the secret broker's calls (`location` on SetProjectSecrets,
ListProjectSecrets, DeleteProjectSecret and ReconcileProjectSecrets, and on a `secrets_ref`'s
GitHub target).

    from orchestrator_mesh import locations
    broker.SetProjectSecrets(secret_broker_pb2.SetProjectSecretsRequest(
        request_id=str(uuid.uuid4()), project_id=project_id, secrets=[...],
        location=locations.environment("production")), timeout=60)

No location (or `repository()`) is the repository's Actions secrets.
"""

from __future__ import annotations

from typing import Iterable

from orchestrator.common.v1 import common_pb2

_VISIBILITY = {
    "all": common_pb2.ORGANIZATION_SECRET_VISIBILITY_ALL,
    "private": common_pb2.ORGANIZATION_SECRET_VISIBILITY_PRIVATE,
    "selected": common_pb2.ORGANIZATION_SECRET_VISIBILITY_SELECTED,
}

__all__ = ["dependabot", "environment", "organization", "repository"]


def repository() -> common_pb2.GitHubSecretLocation:
    """The project repository's Actions secrets (the default)."""
    return common_pb2.GitHubSecretLocation(repository=common_pb2.RepositorySecretLocation())


def environment(name: str) -> common_pb2.GitHubSecretLocation:
    """A deployment environment of the project repository (the broker creates it if missing)."""
    return common_pb2.GitHubSecretLocation(environment=common_pb2.EnvironmentSecretLocation(name=name))


def dependabot() -> common_pb2.GitHubSecretLocation:
    """The project repository's Dependabot secrets."""
    return common_pb2.GitHubSecretLocation(dependabot=common_pb2.DependabotSecretLocation())


def organization(visibility: str = "", selected_projects: Iterable[str] = ()) -> common_pb2.GitHubSecretLocation:
    """The organization's Actions secrets. `visibility` (`all`, `private` or `selected`) is
    required on writes; `selected_projects` are project ids registered at the broker."""
    if visibility and visibility not in _VISIBILITY:
        raise ValueError(f"visibility must be one of {sorted(_VISIBILITY)}, not {visibility!r}")
    return common_pb2.GitHubSecretLocation(
        organization=common_pb2.OrganizationSecretLocation(
            visibility=_VISIBILITY.get(visibility, common_pb2.ORGANIZATION_SECRET_VISIBILITY_UNSPECIFIED),
            selected_project_ids=list(selected_projects),
        )
    )
