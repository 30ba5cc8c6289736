use orchestrator_proto::common::v1 as common;
use tonic::Code;
use tonic_types::StatusExt as _;

use super::*;

/// The fields a refusal names, in order.
fn fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

fn value(name: &str, value: &[u8]) -> common::ProjectSecretValue {
    common::ProjectSecretValue {
        name: name.to_owned(),
        value: value.to_vec(),
    }
}

fn set(
    request_id: &str,
    project_id: &str,
    secrets: Vec<common::ProjectSecretValue>,
) -> pb::SetProjectSecretsRequest {
    pb::SetProjectSecretsRequest {
        request_id: request_id.to_owned(),
        project_id: project_id.to_owned(),
        secrets,
        location: None,
    }
}

#[test]
fn a_valid_batch_becomes_upper_cased_names_with_their_values() {
    let req = set_project_secrets(set(
        "r1",
        "prj-1",
        vec![value("telegram_token", b"t"), value("B", b"v")],
    ))
    .unwrap();
    assert_eq!(req.request_id.as_str(), "r1");
    assert_eq!(req.project_id.as_str(), "prj-1");
    let names: Vec<_> = req.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["TELEGRAM_TOKEN", "B"]);
    assert_eq!(req.secrets[0].value.as_slice(), b"t");
}

#[test]
fn every_broken_rule_of_a_batch_is_named() {
    let big = vec![b'x'; MAX_VALUE + 1];
    let err = set_project_secrets(set(
        "r1",
        "prj-1",
        vec![
            value("1ABC", b"v"),
            value("GITHUB_TOKEN", b"v"),
            value("my-name", b"v"),
            value("Dup", b"v"),
            value("DUP", b"v"),
            value("DEPLOY_HOST", b"v"),
            value("BIG", &big),
            value("EMPTY", b""),
            value("MAX", &big[1..]),
        ],
    ))
    .unwrap_err();
    assert_eq!(
        fields(&err),
        [
            "secrets[0].name",
            "secrets[1].name",
            "secrets[2].name",
            "secrets[4].name",
            "secrets[5].name",
            "secrets[6].value",
            "secrets[7].value",
        ]
    );
    assert!(err.message().contains("appears twice"), "{}", err.message());
    assert!(
        err.message()
            .contains("reserved for the deploy credentials")
    );
}

#[test]
fn a_batch_holds_one_to_a_hundred_secrets() {
    assert_eq!(
        fields(&set_project_secrets(set("r1", "p", vec![])).unwrap_err()),
        ["secrets"]
    );
    let full: Vec<_> = (0..MAX_SECRETS)
        .map(|i| value(&format!("S{i}"), b"v"))
        .collect();
    assert_eq!(
        set_project_secrets(set("r1", "p", full.clone()))
            .unwrap()
            .secrets
            .len(),
        MAX_SECRETS
    );
    let mut over = full;
    over.push(value("ONE_MORE", b"v"));
    assert_eq!(
        fields(&set_project_secrets(set("r1", "p", over)).unwrap_err()),
        ["secrets"]
    );
    // Too many is refused on the count alone: no item of a huge batch is looked at.
    let huge = vec![value("bad name", b""); 200_000];
    assert_eq!(
        fields(&set_project_secrets(set("r1", "p", huge)).unwrap_err()),
        ["secrets"]
    );
}

#[test]
fn ids_are_listed_before_the_secrets_even_in_a_long_list() {
    let bad: Vec<_> = (0..50).map(|i| value(&format!("{i}bad"), b"v")).collect();
    let err = set_project_secrets(set("", "prj/1", bad)).unwrap_err();
    let fields = fields(&err);
    assert_eq!(fields[..3], ["request_id", "project_id", "secrets[0].name"]);
    assert!(
        err.message().ends_with("; and 32 more"),
        "{}",
        err.message()
    );
}

#[test]
fn the_deploy_prefix_is_for_deploy_credentials_only() {
    let name = |raw| SecretName::new(raw).unwrap();
    assert!(is_deploy_credential(&name("deploy_host")));
    assert!(!is_deploy_credential(&name("DEPLOYED")));
    assert!(!is_deploy_credential(&name("MY_DEPLOY_KEY")));
}

#[test]
fn deploy_credentials_are_any_non_empty_subset_under_their_own_names() {
    let creds = |host: &str, key: &[u8]| pb::SetDeployCredentialsRequest {
        request_id: "r1".into(),
        project_id: "prj-1".into(),
        credentials: Some(pb::DeployCredentials {
            host: host.into(),
            ssh_private_key: key.to_vec(),
            ..Default::default()
        }),
        server_id: "srv-1".into(),
    };
    let (req, server) = set_deploy_credentials(creds("203.0.113.7", b"key")).unwrap();
    assert_eq!(server.as_str(), "srv-1");
    let names: Vec<_> = req.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["DEPLOY_HOST", "DEPLOY_SSH_KEY"]);
    assert_eq!(
        fields(&set_deploy_credentials(creds("", b"")).unwrap_err()),
        ["credentials"]
    );
    let none = pb::SetDeployCredentialsRequest {
        request_id: String::new(),
        ..Default::default()
    };
    assert_eq!(
        fields(&set_deploy_credentials(none).unwrap_err()),
        ["request_id", "project_id", "server_id", "credentials"]
    );
    // The server is required and well formed: credentials always say where they come from.
    for bad in ["", "srv 1", "srv/1"] {
        let mut req = creds("h", b"key");
        req.server_id = bad.into();
        assert_eq!(
            fields(&set_deploy_credentials(req).unwrap_err()),
            ["server_id"],
            "{bad:?}"
        );
    }
    let too_big = vec![b'k'; MAX_VALUE + 1];
    assert_eq!(
        fields(&set_deploy_credentials(creds("h", &too_big)).unwrap_err()),
        ["secrets[1].value"]
    );
}

#[test]
fn a_secret_shows_its_name_but_never_its_value() {
    let secret = Secret {
        name: SecretName::new("TOKEN").unwrap(),
        value: Zeroizing::new(b"canary-value".to_vec()),
    };
    let shown = format!("{secret:?}");
    assert!(shown.contains("TOKEN"));
    assert!(!shown.contains("canary"), "{shown}");
}

#[test]
fn registrations_need_ids_and_a_valid_repository() {
    let req = |repository: Option<(&str, &str)>| pb::RegisterRepositoryRequest {
        request_id: "r1".into(),
        project_id: "prj-1".into(),
        repository: repository.map(|(owner, name)| common::RepositoryRef {
            owner: owner.into(),
            name: name.into(),
            id: 0,
        }),
    };
    let ok = register_repository(req(Some(("acme", "app1")))).unwrap();
    assert_eq!(ok.repo.to_string(), "acme/app1");
    let err = register_repository(req(None)).unwrap_err();
    assert_eq!(fields(&err), ["repository"]);
    assert!(err.message().contains("required"));
    assert_eq!(
        fields(&register_repository(req(Some(("-acme", "app1")))).unwrap_err()),
        ["repository"]
    );
    let all_wrong = pb::RegisterRepositoryRequest {
        request_id: "with space".into(),
        project_id: String::new(),
        repository: None,
    };
    assert_eq!(
        fields(&register_repository(all_wrong).unwrap_err()),
        ["request_id", "project_id", "repository"]
    );
}

#[test]
fn list_pages_follow_the_contract_sizes_and_the_shared_token() {
    let list = |size: i32, token: &str| pb::ListProjectSecretsRequest {
        project_id: "prj-1".into(),
        page_size: size,
        page_token: token.into(),
        location: None,
    };
    assert_eq!(list_project_secrets(&list(0, "")).unwrap().1.size(), 100);
    assert_eq!(list_project_secrets(&list(7, "")).unwrap().1.size(), 7);
    assert_eq!(list_project_secrets(&list(5000, "")).unwrap().1.size(), 100);
    assert_eq!(
        fields(&list_project_secrets(&list(-1, "")).unwrap_err()),
        ["page_size"]
    );
    assert_eq!(
        fields(&list_project_secrets(&list(0, "NOT_OURS")).unwrap_err()),
        ["page_token"]
    );
    // A token is the last name of a page.
    let page = list_project_secrets(&list(1, "")).unwrap().1;
    let mut names = vec!["A".to_owned(), "B".to_owned()];
    let token = page.finish(&mut names, |n| vec![n.clone()]);
    let (_, next, location) = list_project_secrets(&list(1, &token)).unwrap();
    assert_eq!(location, Location::Repository, "none = the repository");
    assert_eq!(next.after().unwrap(), ["A"]);
    let bad_project = pb::ListProjectSecretsRequest {
        project_id: "a b".into(),
        ..Default::default()
    };
    assert_eq!(
        fields(&list_project_secrets(&bad_project).unwrap_err()),
        ["project_id"]
    );
}

#[test]
fn deletes_and_reconciles_name_their_project_and_secret() {
    let delete = |project_id: &str, name: &str| pb::DeleteProjectSecretRequest {
        project_id: project_id.into(),
        name: name.into(),
        location: None,
    };
    let (project_id, name, location) = delete_project_secret(&delete("prj-1", "token")).unwrap();
    assert_eq!((project_id.as_str(), name.as_str()), ("prj-1", "TOKEN"));
    assert_eq!(location, Location::Repository);
    assert_eq!(
        fields(&delete_project_secret(&delete("", "1x")).unwrap_err()),
        ["project_id", "name"]
    );
    let reconcile = |project_id: &str| pb::ReconcileProjectSecretsRequest {
        project_id: project_id.into(),
        dry_run: true,
        location: None,
    };
    assert_eq!(
        reconcile_project_secrets(&reconcile("prj-1"))
            .unwrap()
            .0
            .as_str(),
        "prj-1"
    );
    assert_eq!(
        fields(&reconcile_project_secrets(&reconcile("prj.1")).unwrap_err()),
        ["project_id"]
    );
}

/// The scope of a MintRepositoryToken request, or its violations.
fn mint_scope(req: &pb::MintRepositoryTokenRequest) -> Result<TokenScope, Status> {
    mint_repository_token(req).map(|m| m.scope)
}

#[test]
fn token_scopes_are_required_and_clone_needs_a_project() {
    let mint = |scope: pb::RepositoryTokenScope, project_id: &str| pb::MintRepositoryTokenRequest {
        scope: scope as i32,
        project_id: project_id.into(),
        from_template: false,
        request_id: String::new(),
    };
    use pb::RepositoryTokenScope as S;
    let clone = mint_scope(&mint(S::Clone, "prj-1")).unwrap();
    assert_eq!(
        clone,
        TokenScope::Clone {
            project_id: ProjectId::parse("prj-1").unwrap()
        }
    );
    assert_eq!(clone.proto(), S::Clone);
    assert_eq!(clone.project_id(), "prj-1");
    let create = mint_scope(&mint(S::RepositoryCreation, "")).unwrap();
    assert_eq!(
        create,
        TokenScope::RepositoryCreation {
            project_id: None,
            from_template: false
        }
    );
    assert_eq!(create.project_id(), "");
    let named = mint_scope(&mint(S::RepositoryCreation, "prj-2")).unwrap();
    assert_eq!(named.project_id(), "prj-2");
    let generated = mint_scope(&pb::MintRepositoryTokenRequest {
        from_template: true,
        ..mint(S::RepositoryCreation, "")
    })
    .unwrap();
    assert!(matches!(
        generated,
        TokenScope::RepositoryCreation {
            from_template: true,
            ..
        }
    ));
    let commit = mint_scope(&mint(S::InitialCommit, "prj-3")).unwrap();
    assert_eq!(commit.proto(), S::InitialCommit);
    assert_eq!(commit.project_id(), "prj-3");
    let err = mint_scope(&mint(S::InitialCommit, "")).unwrap_err();
    assert!(err.message().contains("required for INITIAL_COMMIT"));

    let err = mint_scope(&mint(S::Clone, "")).unwrap_err();
    assert_eq!(fields(&err), ["project_id"]);
    assert!(err.message().contains("required for CLONE"));
    assert_eq!(
        fields(&mint_scope(&mint(S::Clone, "a/b")).unwrap_err()),
        ["project_id"]
    );
    assert_eq!(
        fields(&mint_scope(&mint(S::Unspecified, "a/b")).unwrap_err()),
        ["scope", "project_id"]
    );
    let unknown = pb::MintRepositoryTokenRequest {
        scope: 99,
        project_id: String::new(),
        from_template: false,
        request_id: String::new(),
    };
    assert_eq!(fields(&mint_scope(&unknown).unwrap_err()), ["scope"]);
}

#[test]
fn a_token_request_id_is_optional_and_checked_when_given() {
    let mint = |request_id: &str| pb::MintRepositoryTokenRequest {
        scope: pb::RepositoryTokenScope::Clone as i32,
        project_id: "prj-1".into(),
        from_template: false,
        request_id: request_id.into(),
    };
    assert_eq!(mint_repository_token(&mint("")).unwrap().request_id, None);
    assert_eq!(
        mint_repository_token(&mint("op-1/clone"))
            .unwrap()
            .request_id
            .unwrap()
            .as_str(),
        "op-1/clone"
    );
    for bad in ["x".repeat(129), "tab\there".to_owned()] {
        assert_eq!(
            fields(&mint_repository_token(&mint(&bad)).unwrap_err()),
            ["request_id"]
        );
    }
}

fn located(location: common::git_hub_secret_location::Kind) -> pb::SetProjectSecretsRequest {
    let mut req = set("r1", "prj-1", vec![value("A", b"v")]);
    req.location = Some(common::GitHubSecretLocation {
        kind: Some(location),
    });
    req
}

#[test]
fn each_location_is_parsed_and_none_means_the_repository() {
    use common::git_hub_secret_location::Kind;
    let none = set_project_secrets(set("r1", "prj-1", vec![value("A", b"v")])).unwrap();
    assert_eq!(none.location, Location::Repository);
    let env = set_project_secrets(located(Kind::Environment(
        common::EnvironmentSecretLocation {
            name: "Production".into(),
        },
    )))
    .unwrap();
    assert_eq!(env.location.key(), "environment:production");
    let bot = set_project_secrets(located(Kind::Dependabot(
        common::DependabotSecretLocation {},
    )))
    .unwrap();
    assert_eq!(bot.location, Location::Dependabot);
    let org = set_project_secrets(located(Kind::Organization(
        common::OrganizationSecretLocation {
            visibility: common::OrganizationSecretVisibility::Selected as i32,
            selected_project_ids: vec!["prj-1".into(), "prj-2".into()],
        },
    )))
    .unwrap();
    assert_eq!(org.location, Location::Organization);
    assert!(matches!(org.visibility, Some(Visibility::Selected(ref p)) if p.len() == 2));
}

#[test]
fn a_bad_location_is_named_field_by_field() {
    use common::git_hub_secret_location::Kind;
    let err = set_project_secrets(located(Kind::Environment(
        common::EnvironmentSecretLocation {
            name: "prod/main".into(),
        },
    )))
    .unwrap_err();
    assert_eq!(fields(&err), ["location.environment.name"]);
    let org = |visibility: common::OrganizationSecretVisibility, ids: Vec<String>| {
        set_project_secrets(located(Kind::Organization(
            common::OrganizationSecretLocation {
                visibility: visibility as i32,
                selected_project_ids: ids,
            },
        )))
        .unwrap_err()
    };
    use common::OrganizationSecretVisibility as V;
    assert_eq!(
        fields(&org(V::Unspecified, vec![])),
        ["location.organization.visibility"]
    );
    assert_eq!(
        fields(&org(V::Private, vec!["prj-1".into()])),
        ["location.organization.selected_project_ids"]
    );
    assert_eq!(
        fields(&org(V::Selected, vec![])),
        ["location.organization.selected_project_ids"]
    );
    assert_eq!(
        fields(&org(
            V::Selected,
            vec!["bad id".into(), "p".into(), "p".into()]
        )),
        [
            "location.organization.selected_project_ids[0]",
            "location.organization.selected_project_ids[2]"
        ]
    );
    // Bounded before any item is looked at.
    let many: Vec<String> = (0..=crate::location::MAX_SELECTED)
        .map(|i| format!("p{i}"))
        .collect();
    assert_eq!(
        fields(&org(V::Selected, many)),
        ["location.organization.selected_project_ids"]
    );
}
