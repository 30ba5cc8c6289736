#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use orchestrator_proto::common::v1 as common;
use orchestrator_proto::scaffolder::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt as _;

use super::*;

fn github(name: &str) -> common::SecretTarget {
    common::SecretTarget {
        target: Some(common::secret_target::Target::GithubSecret(
            common::GitHubSecretTarget {
                name: name.into(),
                location: None,
            },
        )),
    }
}

fn vault(user_id: &str, key: &str) -> common::SecretTarget {
    common::SecretTarget {
        target: Some(common::secret_target::Target::VaultEntry(
            common::VaultEntryRef {
                user_id: user_id.into(),
                key: key.into(),
                version: 0,
            },
        )),
    }
}

fn request(entries: &[(&str, common::SecretTarget)]) -> pb::CreateProjectRequest {
    pb::CreateProjectRequest {
        request_id: "req-1".into(),
        name: "my-bot".into(),
        user_id: "u1".into(),
        template: pb::ProjectTemplate::DockerSsh as i32,
        description: "a bot".into(),
        visibility: pb::RepositoryVisibility::Unspecified as i32,
        secrets_ref: Some(common::SecretsRef {
            entries: entries
                .iter()
                .map(|(k, t)| ((*k).to_owned(), t.clone()))
                .collect::<HashMap<_, _>>(),
        }),
        initial_secrets: Vec::new(),
    }
}

fn secret(name: &str, value: &[u8]) -> common::ProjectSecretValue {
    common::ProjectSecretValue {
        name: name.into(),
        value: value.to_vec(),
    }
}

/// The violated fields, in the order they are reported.
fn violations(status: &Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| (f.field.clone(), f.description.clone()))
        .collect()
}

fn fields(status: &Status) -> Vec<String> {
    violations(status).into_iter().map(|(f, _)| f).collect()
}

#[test]
fn a_valid_request_becomes_typed_values() {
    let mut req = request(&[
        ("bot_token", github("telegram_token")),
        ("do", vault("u1", "do")),
    ]);
    req.initial_secrets = vec![secret("TELEGRAM_TOKEN", b"v")];
    let (spec, initial) = create_project(req, "acme").unwrap();
    assert_eq!(spec.request_id.as_str(), "req-1");
    assert_eq!(spec.name, "my-bot");
    assert_eq!(spec.user_id.as_str(), "u1");
    assert_eq!(spec.template, Template::DockerSsh);
    assert_eq!(spec.visibility, Visibility::Private, "unset is PRIVATE");
    assert_eq!(spec.secrets_ref.entries.len(), 2);
    assert_eq!(initial.0.len(), 1);

    let mut req = request(&[]);
    req.template = pb::ProjectTemplate::Ansible as i32;
    req.visibility = pb::RepositoryVisibility::Public as i32;
    req.secrets_ref = None;
    let (spec, initial) = create_project(req, "acme").unwrap();
    assert_eq!(spec.template, Template::Ansible);
    assert_eq!(spec.visibility, Visibility::Public);
    assert!(spec.secrets_ref.entries.is_empty());
    assert!(initial.0.is_empty());
}

#[test]
fn every_violation_is_reported_at_once_in_field_order() {
    let req = pb::CreateProjectRequest {
        request_id: String::new(),
        name: "bad name!".into(),
        user_id: "u 1".into(),
        template: 0,
        description: "x".repeat(301),
        visibility: 99,
        secrets_ref: Some(common::SecretsRef {
            entries: [("Bad-Key".to_owned(), common::SecretTarget { target: None })].into(),
        }),
        initial_secrets: vec![secret("NOT_IN_REF", b"")],
    };
    let status = create_project(req, "acme").unwrap_err();
    assert_eq!(
        fields(&status),
        [
            "request_id",
            "name",
            "user_id",
            "template",
            "description",
            "visibility",
            "secrets_ref.entries[Bad-Key]",
            "secrets_ref.entries[Bad-Key]",
            "initial_secrets[0].name",
            "initial_secrets[0].value",
        ]
    );
    let described = violations(&status);
    assert_eq!(described[0].1, RequestId::RULE);
    assert_eq!(described[5].1, "a known visibility");
    assert_eq!(described[7].1, "a target is required");
}

#[test]
fn secrets_ref_targets_follow_githubs_rules_and_leave_deploy_names_alone() {
    let req = request(&[
        ("deploy", github("DEPLOY_HOST")),
        ("bad", github("1NAME")),
        ("reserved", github("GITHUB_TOKEN")),
        ("vault", vault("", "do")),
    ]);
    let found = violations(&create_project(req, "acme").unwrap_err());
    let find = |field: &str| {
        found
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no violation of {field} in {found:?}"))
    };
    assert!(find("secrets_ref.entries[deploy].github_secret.name").contains("DEPLOY_*"));
    find("secrets_ref.entries[bad].github_secret.name");
    find("secrets_ref.entries[reserved].github_secret.name");
    assert_eq!(
        find("secrets_ref.entries[vault].vault_entry"),
        "user_id and key are required"
    );
    assert_eq!(found.len(), 4);
}

#[test]
fn a_vault_entry_must_be_the_owners() {
    let ok = request(&[("do_token", vault("u1", "do"))]);
    create_project(ok, "acme").unwrap();
    let req = request(&[("do_token", vault("u2", "do")), ("mine", vault("u1", "cf"))]);
    let found = violations(&create_project(req, "acme").unwrap_err());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].0,
        "secrets_ref.entries[do_token].vault_entry.user_id"
    );
    assert!(found[0].1.contains("owner"), "{found:?}");
}

#[test]
fn a_github_secret_targeted_twice_in_any_case_is_refused() {
    let req = request(&[("one", github("TOKEN")), ("two", github("token"))]);
    let found = violations(&create_project(req, "acme").unwrap_err());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].1.contains("targeted twice"), "{found:?}");
}

#[test]
fn a_name_github_would_change_is_refused_at_name() {
    // GitHub would create `bot` (it drops a `.git` suffix) or `my-bot` (a space becomes `-`):
    // the project would not find its repository. Refused before anything is created.
    for name in ["bot.git", "Bot.GIT", "my bot"] {
        let mut req = request(&[("bot_token", github("TELEGRAM_TOKEN"))]);
        req.name = name.into();
        let found = violations(&create_project(req, "acme").unwrap_err());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "name", "{name}");
    }
    let mut req = request(&[("bot_token", github("TELEGRAM_TOKEN"))]);
    req.name = "bot.gitx".into();
    assert!(create_project(req, "acme").is_ok());
}

#[test]
fn initial_secrets_must_be_github_targets_given_once_with_a_value_github_takes() {
    let mut req = request(&[
        ("bot_token", github("TELEGRAM_TOKEN")),
        ("do", vault("u1", "do")),
    ]);
    req.initial_secrets = vec![
        secret("telegram_token", b"v"),
        secret("TELEGRAM_TOKEN", &vec![b'x'; MAX_SECRET_VALUE + 1]),
        secret("DO", b"v"),
    ];
    let found = violations(&create_project(req, "acme").unwrap_err());
    let described: Vec<_> = found.iter().map(|(f, d)| format!("{f}: {d}")).collect();
    assert_eq!(
        described,
        [
            "initial_secrets[1].name: given twice",
            "initial_secrets[1].value: 1-49,152 bytes",
            "initial_secrets[2].name: must be a GitHub secret named in secrets_ref",
        ]
    );
    // GitHub's 48 KB is 49,152 bytes of the value itself (see the emulator's secrets route):
    // the largest is taken.
    let mut req = request(&[("bot_token", github("TELEGRAM_TOKEN"))]);
    req.initial_secrets = vec![secret("TELEGRAM_TOKEN", &vec![b'x'; MAX_SECRET_VALUE])];
    assert!(create_project(req, "acme").is_ok());
}

#[test]
fn no_violation_message_repeats_a_secret_value() {
    let mut req = request(&[]);
    req.initial_secrets = vec![secret("NOT_IN_REF", b"canary-value")];
    let status = create_project(req, "acme").unwrap_err();
    assert!(!status.message().contains("canary"));
}

#[test]
fn get_project_needs_a_well_formed_id_and_defaults_to_full() {
    let ok = |view: pb::ProjectView| {
        get_project(&pb::GetProjectRequest {
            project_id: "prj-0123456789abcdef".into(),
            view: view as i32,
        })
        .unwrap()
    };
    assert_eq!(ok(pb::ProjectView::Unspecified).1, View::Full);
    assert_eq!(ok(pb::ProjectView::Full).1, View::Full);
    assert_eq!(ok(pb::ProjectView::Basic).1, View::Basic);
    assert_eq!(
        ok(pb::ProjectView::Basic).0.as_str(),
        "prj-0123456789abcdef"
    );
    for bad in ["", "prj/1", &"p".repeat(129)] {
        let status = get_project(&pb::GetProjectRequest {
            project_id: bad.into(),
            view: 0,
        })
        .unwrap_err();
        assert_eq!(fields(&status), ["project_id"]);
    }
}

#[test]
fn list_projects_pages_filters_and_defaults_to_basic() {
    let list = list_projects(&pb::ListProjectsRequest::default()).unwrap();
    assert_eq!(list.view, View::Basic);
    assert_eq!(list.filter, ProjectFilter::default());
    assert_eq!(list.page.size(), orchestrator_fields::DEFAULT_PAGE_SIZE);
    assert_eq!(list.page.after(), None);

    let list = list_projects(&pb::ListProjectsRequest {
        page_size: 5,
        user_id: "u1".into(),
        state: pb::ProjectState::Ready as i32,
        view: pb::ProjectView::Full as i32,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(list.page.size(), 5);
    assert_eq!(list.filter.user_id, "u1");
    assert_eq!(list.filter.state, Some(State::Ready));
    assert_eq!(list.view, View::Full);
    // An unknown state filters nothing.
    let list = list_projects(&pb::ListProjectsRequest {
        state: 42,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(list.filter.state, None);

    let status = list_projects(&pb::ListProjectsRequest {
        page_size: -1,
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(fields(&status), ["page_size"]);
    let status = list_projects(&pb::ListProjectsRequest {
        page_token: "prj-not-a-token".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(fields(&status), ["page_token"]);
}

#[test]
fn more_than_a_hundred_entries_or_initial_secrets_are_refused_on_their_count() {
    let many: Vec<(String, common::SecretTarget)> = (0..=MAX_SECRETS)
        .map(|i| (format!("k{i}"), github(&format!("S{i}"))))
        .collect();
    let borrowed: Vec<(&str, common::SecretTarget)> =
        many.iter().map(|(k, t)| (k.as_str(), t.clone())).collect();
    let mut req = request(&borrowed);
    req.initial_secrets = vec![secret("bad name", b""); 100_000];
    assert_eq!(
        fields(&create_project(req, "acme").unwrap_err()),
        ["secrets_ref.entries", "initial_secrets"]
    );
}
