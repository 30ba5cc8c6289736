//! Secrets beyond the repository's Actions secrets (issue 14), over real mTLS against the GitHub
//! emulator, which holds a key pair per location and decrypts what it receives: a deployment
//! environment's (created when missing), the repository's Dependabot secrets and the
//! organization's, each written with a token carrying only its own permission; the negative
//! cases refused before anything is written; deletes touch only what the broker wrote there.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{ORG, TestMesh, printed, violated_fields};
use orchestrator_github_emulator::Config;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

const BROKER: Service = Service::SecretBroker;
const CREATED: i32 = common::SecretWriteOutcome::Created as i32;

use common::git_hub_secret_location::Kind;

fn environment(name: &str) -> Option<common::GitHubSecretLocation> {
    Some(common::GitHubSecretLocation {
        kind: Some(Kind::Environment(common::EnvironmentSecretLocation {
            name: name.into(),
        })),
    })
}

fn dependabot() -> Option<common::GitHubSecretLocation> {
    Some(common::GitHubSecretLocation {
        kind: Some(Kind::Dependabot(common::DependabotSecretLocation {})),
    })
}

fn organization(
    visibility: common::OrganizationSecretVisibility,
    selected: &[&str],
) -> Option<common::GitHubSecretLocation> {
    Some(common::GitHubSecretLocation {
        kind: Some(Kind::Organization(common::OrganizationSecretLocation {
            visibility: visibility as i32,
            selected_project_ids: selected.iter().map(|s| (*s).to_owned()).collect(),
        })),
    })
}

fn write(
    request_id: &str,
    project_id: &str,
    name: &str,
    value: &[u8],
    location: Option<common::GitHubSecretLocation>,
) -> pb::SetProjectSecretsRequest {
    pb::SetProjectSecretsRequest {
        request_id: request_id.into(),
        project_id: project_id.into(),
        secrets: vec![common::ProjectSecretValue {
            name: name.into(),
            value: value.to_vec(),
        }],
        location,
    }
}

async fn start() -> TestMesh {
    let mesh = TestMesh::builder()
        .postgres()
        .github(Config::default())
        .service(BROKER)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    mesh
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The permissions each mint asked for, in order.
fn minted_permissions(mesh: &TestMesh) -> Vec<Vec<(String, String)>> {
    mesh.github()
        .stats()
        .token_mints
        .iter()
        .map(|m| m.permissions.clone().into_iter().collect())
        .collect()
}

fn perms(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn an_environment_secret_creates_its_environment_and_decrypts_with_its_own_key() {
    let mesh = start().await;
    let github = mesh.github();
    let mut api = mesh.broker_as("api").await;
    github.reset_stats();

    // The same name in the repository and in the environment: two secrets, two values.
    api.set_project_secrets(write("r0", "p1", "API_KEY", b"repo-value", None))
        .await
        .unwrap();
    let results = api
        .set_project_secrets(write(
            "r1",
            "p1",
            "api_key",
            b"production-value",
            environment("Production"),
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].outcome, CREATED, "{results:?}");
    assert_eq!(github.environments(ORG, "app1"), ["production"]);
    assert_eq!(
        github
            .environment_secret(ORG, "app1", "production", "API_KEY")
            .unwrap(),
        b"production-value"
    );
    assert_eq!(
        github.secret(ORG, "app1", "API_KEY").unwrap(),
        b"repo-value"
    );

    // Least privilege: the repository write, the environment write (environments + secrets),
    // and the environment's creation with administration alone.
    assert_eq!(
        minted_permissions(&mesh),
        [
            perms(&[("secrets", "write")]),
            perms(&[("environments", "write"), ("secrets", "write")]),
            perms(&[("administration", "write")]),
        ]
    );

    // Listed per location, with the location.
    let in_env = api
        .list_project_secrets(pb::ListProjectSecretsRequest {
            project_id: "p1".into(),
            location: environment("production"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(in_env.len(), 1);
    assert_eq!(in_env[0].location, environment("production"));
    assert_eq!(in_env[0].presence, common::SecretPresence::Present as i32);
    let reconciled = api
        .reconcile_project_secrets(pb::ReconcileProjectSecretsRequest {
            project_id: "p1".into(),
            dry_run: true,
            location: environment("production"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reconciled.in_sync_count, reconciled.findings.len()),
        (1, 0)
    );

    // A second write to the environment creates nothing more.
    github.reset_stats();
    api.set_project_secrets(write("r2", "p1", "OTHER", b"v", environment("production")))
        .await
        .unwrap();
    assert_eq!(
        minted_permissions(&mesh),
        Vec::<Vec<(String, String)>>::new(),
        "the cached environment token serves, no admin token is minted"
    );
}

#[tokio::test]
async fn an_invalid_environment_name_is_refused_with_its_field_before_github() {
    let mesh = start().await;
    let mut api = mesh.broker_as("api").await;
    mesh.github().reset_stats();
    let long = "e".repeat(256);
    for bad in ["prod/main", "", "a b", long.as_str()] {
        let err = api
            .set_project_secrets(write("r1", "p1", "X", b"v", environment(bad)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert_eq!(
            violated_fields(&err),
            ["location.environment.name"],
            "{bad}"
        );
    }
    assert!(
        mesh.github().stats().requests.is_empty(),
        "nothing reached GitHub"
    );
}

#[tokio::test]
async fn a_dependabot_secret_is_sealed_for_dependabots_key_with_its_permission_only() {
    let mesh = start().await;
    let github = mesh.github();
    let mut api = mesh.broker_as("api").await;
    github.reset_stats();
    api.set_project_secrets(write("r1", "p1", "NPM_TOKEN", b"npm-value", dependabot()))
        .await
        .unwrap();
    assert_eq!(
        github.dependabot_secret(ORG, "app1", "NPM_TOKEN").unwrap(),
        b"npm-value"
    );
    assert_eq!(github.secret(ORG, "app1", "NPM_TOKEN"), None);
    assert_eq!(
        minted_permissions(&mesh),
        [perms(&[("dependabot_secrets", "write")])]
    );
}

#[tokio::test]
async fn organization_secrets_are_shared_with_registered_projects_only_and_owned_by_one() {
    use common::OrganizationSecretVisibility as V;
    let mesh = start().await;
    mesh.register_repository("p2", "app2").await;
    let github = mesh.github();
    let mut api = mesh.broker_as("api").await;

    // Selected repositories: registered projects, as GitHub's repository ids.
    github.reset_stats();
    api.set_project_secrets(write(
        "r1",
        "p1",
        "SHARED",
        b"org-value",
        organization(V::Selected, &["p1", "p2"]),
    ))
    .await
    .unwrap();
    let (value, visibility, ids) = github.org_secret(ORG, "SHARED").unwrap();
    assert_eq!(value, b"org-value");
    assert_eq!(visibility, "selected");
    let mut expected = vec![
        github.repository_id(ORG, "app1").unwrap(),
        github.repository_id(ORG, "app2").unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let asked = minted_permissions(&mesh);
    assert!(
        asked.contains(&perms(&[("organization_secrets", "write")])),
        "{asked:?}"
    );
    assert!(
        asked
            .iter()
            .all(|p| *p == perms(&[("organization_secrets", "write")])
                || *p == perms(&[("metadata", "read")])),
        "nothing but the organization secrets and reading the selected repositories: {asked:?}"
    );

    // A project that is not registered is refused, and nothing is written.
    let err = api
        .set_project_secrets(write(
            "r2",
            "p1",
            "ELSEWHERE",
            b"v",
            organization(V::Selected, &["p1", "not-registered"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "PROJECT_NOT_REGISTERED");
    assert!(github.org_secret(ORG, "ELSEWHERE").is_none());

    // Visibility is required, and selected ids only with SELECTED.
    let err = api
        .set_project_secrets(write(
            "r3",
            "p1",
            "X",
            b"v",
            organization(V::Unspecified, &[]),
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["location.organization.visibility"]);
    let err = api
        .set_project_secrets(write("r3", "p1", "X", b"v", organization(V::All, &["p1"])))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["location.organization.selected_project_ids"]
    );

    // Another project cannot take over p1's organization secret, nor one the broker did not
    // write.
    let err = api
        .set_project_secrets(write(
            "r4",
            "p2",
            "SHARED",
            b"hijack",
            organization(V::All, &[]),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ORGANIZATION_SECRET_OF_ANOTHER_PROJECT");
    github.put_org_secret_directly(ORG, "FOREIGN", b"theirs");
    let err = api
        .set_project_secrets(write(
            "r5",
            "p1",
            "FOREIGN",
            b"ours",
            organization(V::All, &[]),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "ORGANIZATION_SECRET_OF_ANOTHER_PROJECT");
    assert_eq!(github.org_secret(ORG, "SHARED").unwrap().0, b"org-value");
    assert_eq!(github.org_secret(ORG, "FOREIGN").unwrap().0, b"theirs");

    // Only `api` writes organization secrets: the scaffolder may not.
    let err = mesh
        .broker_as("scaffolder")
        .await
        .set_project_secrets(write(
            "r6",
            "p1",
            "FROM_SCAFFOLDER",
            b"v",
            organization(V::All, &[]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(reason(&err), "ORGANIZATION_SECRET_NOT_ALLOWED");
}

#[tokio::test]
async fn deletes_touch_only_what_the_broker_wrote_in_that_location() {
    use common::OrganizationSecretVisibility as V;
    let mesh = start().await;
    mesh.register_repository("p2", "app2").await;
    let github = mesh.github();
    let mut api = mesh.broker_as("api").await;
    api.set_project_secrets(write(
        "r1",
        "p1",
        "TOKEN",
        b"env",
        environment("production"),
    ))
    .await
    .unwrap();
    api.set_project_secrets(write("r2", "p1", "TOKEN", b"bot", dependabot()))
        .await
        .unwrap();
    api.set_project_secrets(write(
        "r3",
        "p1",
        "TOKEN_ORG",
        b"org",
        organization(V::All, &[]),
    ))
    .await
    .unwrap();
    github.put_secret_directly(ORG, "app1", "TOKEN", b"someone else's");
    github.put_org_secret_directly(ORG, "FOREIGN", b"theirs");

    let delete = |name: &str, project: &str, location: Option<common::GitHubSecretLocation>| {
        pb::DeleteProjectSecretRequest {
            project_id: project.into(),
            name: name.into(),
            location,
        }
    };
    // Not written by the broker there: NOT_FOUND, nothing deleted, in every kind.
    for (name, project, location) in [
        ("TOKEN", "p1", None),
        ("OTHER", "p1", environment("production")),
        ("TOKEN", "p1", environment("staging")),
        ("OTHER", "p1", dependabot()),
        ("FOREIGN", "p1", organization(V::Unspecified, &[])),
        ("TOKEN_ORG", "p2", organization(V::Unspecified, &[])),
    ] {
        let err = api
            .delete_project_secret(delete(name, project, location.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{name} {project} {location:?}");
    }
    assert_eq!(
        github.secret(ORG, "app1", "TOKEN").unwrap(),
        b"someone else's"
    );
    assert!(github.org_secret(ORG, "FOREIGN").is_some());
    assert!(github.org_secret(ORG, "TOKEN_ORG").is_some());

    // Its own: deleted in its location only.
    for location in [environment("production"), dependabot()] {
        let gone = api
            .delete_project_secret(delete("TOKEN", "p1", location))
            .await
            .unwrap()
            .into_inner();
        assert!(gone.deleted_at_github);
    }
    api.delete_project_secret(delete("TOKEN_ORG", "p1", organization(V::Unspecified, &[])))
        .await
        .unwrap();
    assert_eq!(
        github.environment_secret(ORG, "app1", "production", "TOKEN"),
        None
    );
    assert_eq!(github.dependabot_secret(ORG, "app1", "TOKEN"), None);
    assert!(github.org_secret(ORG, "TOKEN_ORG").is_none());
    assert_eq!(
        github.secret(ORG, "app1", "TOKEN").unwrap(),
        b"someone else's"
    );
}

/// `orchctl secrets set p1 <location flags> --from-env-file <file>`, as the operator.
async fn set_from_cli(
    mesh: &orchestrator_e2e::TestMesh,
    location: &[&str],
    env_file: &str,
) -> std::process::Output {
    let mut args = vec!["secrets", "set", "p1"];
    args.extend_from_slice(location);
    args.extend(["--from-env-file", env_file]);
    mesh.orchctl(BROKER, &args).await
}

#[tokio::test]
async fn orchctl_sets_lists_and_deletes_in_each_location() {
    let mesh = start().await;
    let github = mesh.github();
    let env_file =
        orchestrator_e2e::write_secret(mesh.pki().dir(), "loc.env", "RELEASE_KEY=from-cli\n")
            .unwrap();
    let out = set_from_cli(&mesh, &["--environment", "production"], &env_file).await;
    assert!(out.status.success(), "{}", printed(&out));
    assert_eq!(
        github
            .environment_secret(ORG, "app1", "production", "RELEASE_KEY")
            .unwrap(),
        b"from-cli"
    );
    let out = set_from_cli(&mesh, &["--dependabot"], &env_file).await;
    assert!(out.status.success(), "{}", printed(&out));
    assert_eq!(
        github
            .dependabot_secret(ORG, "app1", "RELEASE_KEY")
            .unwrap(),
        b"from-cli"
    );
    let out = set_from_cli(
        &mesh,
        &[
            "--organization",
            "--visibility",
            "selected",
            "--selected-project",
            "p1",
        ],
        &env_file,
    )
    .await;
    assert!(out.status.success(), "{}", printed(&out));
    let (value, visibility, ids) = github.org_secret(ORG, "RELEASE_KEY").unwrap();
    assert_eq!(
        (value.as_slice(), visibility.as_str()),
        (&b"from-cli"[..], "selected")
    );
    assert_eq!(ids, [github.repository_id(ORG, "app1").unwrap()]);

    // The environment's list names only its own secrets.
    let out = mesh
        .orchctl(
            BROKER,
            &["secrets", "list", "p1", "--environment", "production"],
        )
        .await;
    let text = printed(&out);
    assert!(
        out.status.success() && text.contains("RELEASE_KEY"),
        "{text}"
    );
    let out = mesh.orchctl(BROKER, &["secrets", "list", "p1"]).await;
    assert!(!printed(&out).contains("RELEASE_KEY"));

    // An invalid environment name names its field.
    let out = set_from_cli(&mesh, &["--environment", "no/slash"], &env_file).await;
    assert!(!out.status.success());
    assert!(
        printed(&out).contains("location.environment.name"),
        "{}",
        printed(&out)
    );

    // Two locations at once are refused by the command line.
    let out = set_from_cli(&mesh, &["--dependabot", "--organization"], &env_file).await;
    assert!(!out.status.success());

    let out = mesh
        .orchctl(
            BROKER,
            &[
                "secrets",
                "delete",
                "p1",
                "RELEASE_KEY",
                "--environment",
                "production",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", printed(&out));
    assert_eq!(
        github.environment_secret(ORG, "app1", "production", "RELEASE_KEY"),
        None
    );
    assert!(
        github
            .dependabot_secret(ORG, "app1", "RELEASE_KEY")
            .is_some()
    );
}
