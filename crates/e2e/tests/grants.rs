//! One user's credentials never serve another user's project, end to end with real processes
//! over mTLS: projects created through the scaffolder (which records each one's owner), users'
//! own provider keys in the vault, infra against the provider emulators and a real broker
//! against the GitHub emulator. A refusal comes before any provider call: no droplet, no DNS
//! record, no DEPLOY_* secret.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{
    ORG, ProviderSetup, TestMesh, USERS_OWN_CF_TOKEN, USERS_OWN_DO_TOKEN, wait_until,
};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_proto::vault::v1 as vault;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const INFRA: Service = Service::Infra;
const DEPLOY_SECRETS: [&str; 4] = [
    "DEPLOY_HOST",
    "DEPLOY_USER",
    "DEPLOY_SSH_KEY",
    "DEPLOY_KNOWN_HOSTS",
];

/// The whole mesh on PostgreSQL against the GitHub and provider emulators.
async fn start() -> TestMesh {
    TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(ProviderSetup::default())
        .env(INFRA, "INFRA_READY_TIMEOUT_SECS", "60")
        .service(Service::Vault)
        .service(Service::SecretBroker)
        .service(Service::Scaffolder)
        .service(INFRA)
        .start()
        .await
}

/// `user`'s own DigitalOcean and Cloudflare keys in the vault, as the API stores them.
async fn put_keys(mesh: &TestMesh, user: &str) {
    let mut api = mesh.vault_as("api").await;
    for (key, value) in [
        ("digitalocean", USERS_OWN_DO_TOKEN),
        ("cloudflare", USERS_OWN_CF_TOKEN),
    ] {
        api.put_user_secret(vault::PutUserSecretRequest {
            user_id: user.into(),
            key: key.into(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// `user`'s project `name`, whose `secrets_ref` names `user`'s two keys.
async fn project_of(mesh: &TestMesh, user: &str, name: &str) -> String {
    mesh.create_project(
        user,
        name,
        &[
            ("do_token", user, "digitalocean"),
            ("dns_token", user, "cloudflare"),
        ],
    )
    .await
    .unwrap()
}

fn user_vault(user: &str, key: &str) -> Option<pb::CredentialSource> {
    Some(pb::CredentialSource {
        source: Some(pb::credential_source::Source::UserVault(
            common::VaultEntryRef {
                user_id: user.into(),
                key: key.into(),
                version: 0,
            },
        )),
    })
}

/// A DigitalOcean provision for `project_id` at `hostname`, with `user`'s own keys for the
/// provider and DNS (each `None` = the platform's).
fn provision(
    request_id: &str,
    project_id: &str,
    hostname: &str,
    provider_user: Option<&str>,
    dns_user: Option<&str>,
) -> pb::ProvisionServerRequest {
    pb::ProvisionServerRequest {
        provider_credentials: provider_user.and_then(|u| user_vault(u, "digitalocean")),
        dns_credentials: dns_user.and_then(|u| user_vault(u, "cloudflare")),
        ..orchestrator_e2e::droplet_provision(request_id, project_id, hostname)
    }
}

/// Watches an operation to its end; the last snapshot.
async fn finished(api: &mut InfraServiceClient<Channel>, id: &str) -> pb::Operation {
    let seen = orchestrator_e2e::watch_operation(api, id, Duration::from_secs(90)).await;
    seen.into_iter().last().expect("the operation was watched")
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// What the providers and GitHub saw: droplet requests, DNS requests, and the DEPLOY_*
/// secrets present in `repo`.
fn footprint(mesh: &TestMesh, repo: &str) -> (usize, usize, Vec<&'static str>) {
    let droplets = mesh.digitalocean().stats().requests.values().sum();
    let dns = mesh.cloudflare().stats().requests.values().sum();
    let deploy = DEPLOY_SECRETS
        .into_iter()
        .filter(|name| mesh.github().secret(ORG, repo, name).is_some())
        .collect();
    (droplets, dns, deploy)
}

/// Alice's keys never serve Bob's project, nor Bob's hers: PERMISSION_DENIED
/// `CREDENTIAL_NOT_OWNED` at once, with no request at DigitalOcean or Cloudflare, no server
/// recorded and no DEPLOY_* secret written to Bob's repository. Alice's own project with her
/// own keys still provisions (the seed flow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_key_never_serves_another_users_project() {
    let mesh = start().await;
    put_keys(&mesh, "alice").await;
    put_keys(&mesh, "bob").await;
    let alices = project_of(&mesh, "alice", "alice-app").await;
    let bobs = project_of(&mesh, "bob", "bob-app").await;
    let mut api = mesh.infra_as("api").await;

    let attempts = [
        // Alice's DigitalOcean key for Bob's project.
        provision(
            "a-for-b",
            &bobs,
            "bob.orchestrator.test",
            Some("alice"),
            None,
        ),
        // Bob's own provider key, Alice's DNS key, for Bob's project.
        provision(
            "dns-a-for-b",
            &bobs,
            "bob.orchestrator.test",
            Some("bob"),
            Some("alice"),
        ),
        // Bob's key for Alice's project.
        provision(
            "b-for-a",
            &alices,
            "alice.orchestrator.test",
            Some("bob"),
            None,
        ),
    ];
    for request in attempts {
        let id = request.request_id.clone();
        let refused = api.provision_server(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{id}: {refused:?}");
        assert_eq!(
            reason(&refused),
            "CREDENTIAL_NOT_OWNED",
            "{id}: {refused:?}"
        );
        assert!(
            refused.message().contains("CREDENTIAL_NOT_OWNED"),
            "{}",
            refused.message()
        );
    }
    // A project the scaffolder does not know has no owner whose key could serve it.
    let unknown = api
        .provision_server(provision(
            "unknown",
            "prj-0000000000000000",
            "x.orchestrator.test",
            Some("alice"),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(reason(&unknown), "PROJECT_NOT_FOUND");

    assert_eq!(footprint(&mesh, "bob-app"), (0, 0, vec![]));
    assert_eq!(footprint(&mesh, "alice-app"), (0, 0, vec![]));
    let servers = api
        .list_servers(pb::ListServersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .servers;
    assert!(servers.is_empty(), "a refused request recorded {servers:?}");

    // The seed flow: Alice's project with Alice's keys.
    let op = api
        .provision_server(provision(
            "a-for-a",
            &alices,
            "alice.orchestrator.test",
            Some("alice"),
            Some("alice"),
        ))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let done = finished(&mut api, &op.id).await;
    assert_eq!(
        done.state,
        pb::OperationState::Succeeded as i32,
        "{done:?}\n{}",
        mesh.logs(INFRA)
    );
    wait_until("alice's DEPLOY_* secrets", Duration::from_secs(10), || {
        footprint(&mesh, "alice-app").2.len() == DEPLOY_SECRETS.len()
    })
    .await;
    let droplets = mesh.digitalocean().live_droplets();
    assert_eq!(droplets.len(), 1);
    assert_eq!(droplets[0].token_used, USERS_OWN_DO_TOKEN);
    assert!(footprint(&mesh, "bob-app").2.is_empty());
}

/// A read of `user`'s `key` as infra, for `project_id`.
fn read(user: &str, key: &str, project_id: &str) -> vault::GetUserSecretRequest {
    vault::GetUserSecretRequest {
        user_id: user.into(),
        key: key.into(),
        version: 0,
        project_id: project_id.into(),
    }
}

fn revoke(user: &str, key: &str, project_id: &str) -> vault::RevokeUserSecretGrantRequest {
    vault::RevokeUserSecretGrantRequest {
        user_id: user.into(),
        key: key.into(),
        project_id: project_id.into(),
    }
}

/// The vault serves a key only for a project its user granted it to: the scaffolder records
/// the grant of each vault entry of a new project's `secrets_ref`; a read for no project,
/// another project, or a key the project does not name is PERMISSION_DENIED `GRANT_MISSING`
/// (nothing read, whether the key exists or not). The user revokes a grant through the API:
/// reads stop at once, and a provision on that key fails with `GRANT_MISSING` and buys no
/// droplet. Only the scaffolder grants, only the API revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_serves_a_key_only_for_a_project_it_was_granted_to() {
    let mesh = start().await;
    put_keys(&mesh, "alice").await;
    put_keys(&mesh, "bob").await;
    let alices = project_of(&mesh, "alice", "alice-app").await;
    let bobs = project_of(&mesh, "bob", "bob-app").await;
    let mut infra = mesh.vault_as("infra").await;

    let got = infra
        .get_user_secret(read("alice", "digitalocean", &alices))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(got.value, USERS_OWN_DO_TOKEN.as_bytes());
    for (user, key, project, why) in [
        (
            "alice",
            "digitalocean",
            bobs.as_str(),
            "another user's project",
        ),
        ("alice", "digitalocean", "", "no project"),
        (
            "alice",
            "other",
            alices.as_str(),
            "a key the project does not name",
        ),
        (
            "alice",
            "missing",
            alices.as_str(),
            "a key that does not exist",
        ),
    ] {
        let refused = infra
            .get_user_secret(read(user, key, project))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{why}: {refused:?}");
        assert_eq!(reason(&refused), "GRANT_MISSING", "{why}: {refused:?}");
    }
    // All or nothing: one read without a grant fails the batch.
    let batch = infra
        .batch_get_user_secrets(vault::BatchGetUserSecretsRequest {
            requests: vec![
                read("alice", "digitalocean", &alices),
                read("bob", "digitalocean", &alices),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(batch.code(), Code::PermissionDenied, "{batch:?}");
    assert!(batch.message().contains("requests[1]"), "{batch:?}");

    // Only the scaffolder grants; the API cannot lend Bob's key to Alice's project.
    let forged = mesh
        .vault_as("api")
        .await
        .grant_user_secret(vault::GrantUserSecretRequest {
            user_id: "bob".into(),
            key: "digitalocean".into(),
            project_id: alices.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied);
    assert_eq!(reason(&forged), "RPC_NOT_ALLOWED");
    // Only the API (the user) revokes.
    let not_yours = mesh
        .vault_as("scaffolder")
        .await
        .revoke_user_secret_grant(revoke("alice", "digitalocean", &alices))
        .await
        .unwrap_err();
    assert_eq!(reason(&not_yours), "RPC_NOT_ALLOWED");

    // Alice revokes her DigitalOcean key's grant to her project (orchctl, as `api`).
    let out = mesh
        .orchctl(
            Service::Vault,
            &[
                "vault",
                "revoke",
                "--user",
                "alice",
                "--key",
                "digitalocean",
                "--project",
                &alices,
            ],
        )
        .await;
    assert!(out.status.success(), "{}", orchestrator_e2e::printed(&out));
    // Idempotent; a grant never made is named.
    let mut api = mesh.vault_as("api").await;
    let revoked = api
        .revoke_user_secret_grant(revoke("alice", "digitalocean", &alices))
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert!(revoked.revoke_time.is_some());
    let never = api
        .revoke_user_secret_grant(revoke("alice", "digitalocean", &bobs))
        .await
        .unwrap_err();
    assert_eq!(never.code(), Code::NotFound);
    assert_eq!(reason(&never), "GRANT_NOT_FOUND");
    let refused = infra
        .get_user_secret(read("alice", "digitalocean", &alices))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "GRANT_MISSING", "{refused:?}");
    // Her other grant stands.
    infra
        .get_user_secret(read("alice", "cloudflare", &alices))
        .await
        .unwrap();
    // Each grant and the revocation are in the vault's audit log, with who did it.
    let audited = mesh
        .dba_dumps(
            Service::Vault,
            "SELECT caller || ' ' || method || ' ' || target AS dump FROM audit_log \
             WHERE method LIKE '%Grant%' ORDER BY seq",
        )
        .await;
    let target = |user: &str, key: &str, project: &str| {
        format!("users/{user}/secrets/{key}/grants/{project}")
    };
    let revocation = format!(
        "spiffe://orchestrator.local/api /orchestrator.vault.v1.VaultService/RevokeUserSecretGrant {}",
        target("alice", "digitalocean", &alices)
    );
    assert_eq!(audited.len(), 5, "{audited:?}");
    assert_eq!(audited.last(), Some(&revocation), "{audited:?}");
    assert!(
        audited[..4].iter().all(|a| a.starts_with(
            "spiffe://orchestrator.local/scaffolder /orchestrator.vault.v1.VaultService/GrantUserSecret "
        )),
        "{audited:?}"
    );

    // A provision on the revoked key: the owner check passes (her key, her project), the vault
    // refuses, and the operation fails before DigitalOcean is asked for anything.
    let mut infra_api = mesh.infra_as("api").await;
    let op = infra_api
        .provision_server(provision(
            "after-revoke",
            &alices,
            "alice.orchestrator.test",
            Some("alice"),
            None,
        ))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let done = finished(&mut infra_api, &op.id).await;
    assert_eq!(done.state, pb::OperationState::Failed as i32, "{done:?}");
    let error = done.error.unwrap();
    assert_eq!(error.reason, "GRANT_MISSING", "{error:?}");
    assert_eq!(error.code, Code::PermissionDenied as i32);
    assert_eq!(
        footprint(&mesh, "alice-app").0,
        0,
        "DigitalOcean was called"
    );
    assert!(mesh.digitalocean().live_droplets().is_empty());
}

/// A project's `secrets_ref` may name its owner's vault entries only: the scaffolder refuses
/// another user's entry (INVALID_ARGUMENT naming the field), creates nothing and grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_cannot_name_another_users_vault_entry() {
    let mesh = TestMesh::builder()
        .github(GhConfig::default())
        .service(Service::Vault)
        .service(Service::SecretBroker)
        .service(Service::Scaffolder)
        .start()
        .await;
    put_keys(&mesh, "bob").await;
    let refused = mesh
        .create_project("alice", "alice-app", &[("do_token", "bob", "digitalocean")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        orchestrator_e2e::violated_fields(&refused),
        ["secrets_ref.entries[do_token].vault_entry.user_id"]
    );
    assert_eq!(
        mesh.github().stats().requests.get("POST /orgs/{org}/repos"),
        None,
        "a repository was created"
    );
    let grants = mesh
        .dba_dumps(
            Service::Vault,
            "SELECT CAST(COUNT(*) AS TEXT) AS dump FROM user_secret_grants",
        )
        .await;
    assert_eq!(grants, ["0"]);
}
