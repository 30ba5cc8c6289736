//! Request validation: every field checked before anything is recorded or created, every
//! failure reported at once (INVALID_ARGUMENT with field violations), typed values out.

use std::collections::HashSet;

use orchestrator_fields::{Invalid, Page, ProjectId, RequestId, UserId};
use orchestrator_github::{RepoRef, SecretName};
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use orchestrator_status::{At as _, Fields as _, Violations};
use tonic::Status;

use crate::db::ProjectFilter;
use crate::project::{InitialSecrets, ProjectSpec, State, Template, Visibility, deploy_files};
use crate::view::View;

/// The largest initial secret value GitHub takes (48 KiB).
const MAX_SECRET_VALUE: usize = 48 * 1024;
/// The most `secrets_ref` entries and initial secrets: a repository holds at most 100 secrets.
const MAX_SECRETS: usize = 100;

/// A CreateProject request: the project to record, and the initial secret values to forward.
pub(crate) fn create_project(
    req: pb::CreateProjectRequest,
    org: &str,
) -> Result<(ProjectSpec, InitialSecrets), Status> {
    let mut v = Violations::new();
    // Split here rather than collected at the end, so violations are listed in field order.
    let fields = (
        RequestId::parse(&req.request_id).at("request_id"),
        repository_name(org, &req.name).at("name"),
        UserId::parse(&req.user_id).at("user_id"),
        template(req.template).at("template"),
        rule(req.description.len() <= 300, "at most 300 characters").at("description"),
        visibility(req.visibility).at("visibility"),
    )
        .split(&mut v);
    let secrets_ref = req.secrets_ref.unwrap_or_default();
    let github_names = check_secrets_ref(&mut v, &secrets_ref, &req.user_id);
    // The template must render for these names: refused here, before anything is created.
    if v.is_empty()
        && let Some((_, _, _, template, _, _)) = &fields
        && let Err(e) = deploy_files(*template, &req.name, &secrets_ref)
    {
        v.add("secrets_ref", e.to_string());
    }
    check_initial_secrets(&mut v, &req.initial_secrets, &github_names);
    let (request_id, _, user_id, template, (), visibility) = v.finish_with(fields)?;
    let spec = ProjectSpec {
        request_id,
        name: req.name,
        user_id,
        template,
        description: req.description,
        visibility,
        secrets_ref,
    };
    Ok((spec, InitialSecrets(req.initial_secrets)))
}

/// A name GitHub takes for a repository in `org` as it is: GitHub would change any other
/// (characters outside letters, digits, `.`, `-`, `_` become `-`, a `.git` suffix is dropped;
/// the GitHub emulator does the same), and the project would not find its repository.
fn repository_name(org: &str, name: &str) -> Result<(), Invalid> {
    RepoRef::new(org, name).map(drop).map_err(|_| {
        Invalid("a GitHub repository name: 1-100 characters of letters, digits, `.`, `-`, `_`")
    })?;
    rule(
        !name.to_ascii_lowercase().ends_with(".git"),
        "no `.git` suffix (GitHub would drop it)",
    )
}

/// `Ok` when `ok`, else the rule broken.
fn rule(ok: bool, rule: &'static str) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(Invalid(rule)) }
}

fn template(raw: i32) -> Result<Template, Invalid> {
    match pb::ProjectTemplate::try_from(raw) {
        Ok(pb::ProjectTemplate::DockerSsh) => Ok(Template::DockerSsh),
        Ok(pb::ProjectTemplate::Ansible) => Ok(Template::Ansible),
        _ => Err(Invalid("DOCKER_SSH or ANSIBLE")),
    }
}

fn visibility(raw: i32) -> Result<Visibility, Invalid> {
    match pb::RepositoryVisibility::try_from(raw) {
        // Unset is PRIVATE.
        Ok(pb::RepositoryVisibility::Unspecified | pb::RepositoryVisibility::Private) => {
            Ok(Visibility::Private)
        }
        Ok(pb::RepositoryVisibility::Internal) => Ok(Visibility::Internal),
        Ok(pb::RepositoryVisibility::Public) => Ok(Visibility::Public),
        Err(_) => Err(Invalid("a known visibility")),
    }
}

/// An abstract key: the app's environment variable, upper-cased.
fn valid_abstract_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.as_bytes()[0].is_ascii_lowercase()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Checks each `secrets_ref` entry; returns the GitHub secret names it targets (upper-cased).
/// A vault entry must be the project owner's (`owner`): a project is granted its owner's keys
/// only.
fn check_secrets_ref(
    v: &mut Violations,
    secrets_ref: &common::SecretsRef,
    owner: &str,
) -> HashSet<String> {
    let mut github_names = HashSet::new();
    if !v.count(
        secrets_ref.entries.len(),
        0..=MAX_SECRETS,
        "secrets_ref.entries",
    ) {
        return github_names;
    }
    for (key, target) in &secrets_ref.entries {
        let field = format!("secrets_ref.entries[{key}]");
        v.check(
            valid_abstract_key(key),
            &field,
            "keys are 1-64 characters of [a-z0-9_], starting with a letter",
        );
        match &target.target {
            Some(common::secret_target::Target::GithubSecret(g)) => {
                let name_field = format!("{field}.github_secret.name");
                // The same name may live in several locations: unique per location.
                let place = crate::project::secret_location_key(g.location.as_ref());
                if let Some(common::git_hub_secret_location::Kind::Environment(e)) =
                    g.location.as_ref().and_then(|l| l.kind.as_ref())
                    && let Err(rule) = orchestrator_github::EnvironmentName::new(&e.name)
                {
                    v.add(
                        format!("{field}.github_secret.location.environment.name"),
                        rule,
                    );
                }
                match SecretName::new(&g.name) {
                    Ok(name) if name.as_str().starts_with("DEPLOY_") => v.add(
                        name_field,
                        "DEPLOY_* names are reserved for the deploy credentials",
                    ),
                    Ok(name) => {
                        // Initial secrets fill repository secrets only (the key is the bare
                        // name, as `check_initial_secrets` looks it up).
                        let key = if place == crate::project::REPOSITORY {
                            name.as_str().to_owned()
                        } else {
                            format!("{place}/{}", name.as_str())
                        };
                        if !github_names.insert(key) {
                            v.add(
                                name_field,
                                format!(
                                    "`{}` is targeted twice (names are case-insensitive)",
                                    g.name
                                ),
                            );
                        }
                    }
                    Err(e) => v.add(name_field, e.to_string()),
                }
            }
            Some(common::secret_target::Target::VaultEntry(e)) => {
                if e.user_id.is_empty() || e.key.is_empty() {
                    v.add(
                        format!("{field}.vault_entry"),
                        "user_id and key are required",
                    );
                } else {
                    // Architecture Invariant: a user's own credential serves only that user's
                    // projects (the grant the scaffolder records is the owner's).
                    v.check(
                        e.user_id == owner,
                        format!("{field}.vault_entry.user_id"),
                        "must be the project's user_id: a project uses its owner's vault entries only",
                    );
                }
            }
            None => v.add(&field, "a target is required"),
        }
    }
    github_names
}

/// Each initial secret must be a GitHub secret of `secrets_ref`, given once, with a value
/// GitHub takes.
fn check_initial_secrets(
    v: &mut Violations,
    initial: &[common::ProjectSecretValue],
    github_names: &HashSet<String>,
) {
    if !v.count(initial.len(), 0..=MAX_SECRETS, "initial_secrets") {
        return;
    }
    let mut seen = HashSet::new();
    for (i, secret) in initial.iter().enumerate() {
        let upper = secret.name.to_ascii_uppercase();
        v.check(
            github_names.contains(&upper),
            format!("initial_secrets[{i}].name"),
            "must be a GitHub secret named in secrets_ref",
        );
        v.check(
            seen.insert(upper),
            format!("initial_secrets[{i}].name"),
            "given twice",
        );
        v.check(
            (1..=MAX_SECRET_VALUE).contains(&secret.value.len()),
            format!("initial_secrets[{i}].value"),
            "1-49,152 bytes",
        );
    }
}

/// A GetProject request: the project and how much of it to return (unset = FULL).
pub(crate) fn get_project(req: &pb::GetProjectRequest) -> Result<(ProjectId, View), Status> {
    let id = Violations::new().collect(ProjectId::parse(&req.project_id).at("project_id"))?;
    let view = match pb::ProjectView::try_from(req.view) {
        Ok(pb::ProjectView::Basic) => View::Basic,
        _ => View::Full,
    };
    Ok((id, view))
}

/// A validated ListProjects request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListProjects {
    pub(crate) filter: ProjectFilter,
    /// Keyset paging by project id (the token holds the last id of the previous page).
    pub(crate) page: Page,
    /// Unset = BASIC.
    pub(crate) view: View,
}

pub(crate) fn list_projects(req: &pb::ListProjectsRequest) -> Result<ListProjects, Status> {
    let page = Violations::new().collect(Page::parse(req.page_size, &req.page_token, 1))?;
    // An unknown state filters nothing, like an unset one.
    let state = match pb::ProjectState::try_from(req.state) {
        Ok(pb::ProjectState::Creating) => Some(State::Creating),
        Ok(pb::ProjectState::Ready) => Some(State::Ready),
        Ok(pb::ProjectState::Failed) => Some(State::Failed),
        Ok(pb::ProjectState::Unspecified) | Err(_) => None,
    };
    let view = match pb::ProjectView::try_from(req.view) {
        Ok(pb::ProjectView::Full) => View::Full,
        _ => View::Basic,
    };
    Ok(ListProjects {
        filter: ProjectFilter {
            user_id: req.user_id.clone(),
            state,
        },
        page,
        view,
    })
}

#[cfg(test)]
mod tests;
