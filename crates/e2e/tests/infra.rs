//! Infra end to end with real processes: provisioning on the DigitalOcean emulator (readiness
//! checked over SSH against the booted droplet) and Time4VPS takeovers, DNS at the Cloudflare
//! emulator, the deploy credentials handed to a real broker (decrypted at the GitHub emulator
//! and then used to log in), under faults and across an infra crash; destroy; users' own keys.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{
    CF_TOKEN, DO_TOKEN, ORG, ProviderSetup, T4_PASSWORD, T4_SERVER, TestMesh, USERS_OWN_CF_TOKEN,
    USERS_OWN_DO_TOKEN, droplet_provision, printed, raw, wait_until, watch_operation,
};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_provider_emulators as emu;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const INFRA: Service = Service::Infra;

async fn start(faults: Option<emu::Faults>) -> TestMesh {
    start_with(ProviderSetup {
        faults,
        ..ProviderSetup::default()
    })
    .await
}

async fn start_with(setup: ProviderSetup) -> TestMesh {
    start_mesh(setup, &[Service::SecretBroker, INFRA]).await
}

/// `services` on PostgreSQL against the GitHub and provider emulators (infra with a one-minute
/// readiness timeout), and project p1's repository app1 registered at the broker.
async fn start_mesh(setup: ProviderSetup, services: &[Service]) -> TestMesh {
    let builder = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(setup)
        .env(INFRA, "INFRA_READY_TIMEOUT_SECS", "60");
    let mesh = services
        .iter()
        .fold(builder, |b, service| b.service(*service))
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    mesh
}

fn provision(request_id: &str) -> pb::ProvisionServerRequest {
    droplet_provision(request_id, "p1", "app1.orchestrator.test")
}

/// Sends a provision; the operation as accepted.
async fn accept(
    api: &mut InfraServiceClient<Channel>,
    request: pb::ProvisionServerRequest,
) -> pb::Operation {
    api.provision_server(request)
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap()
}

/// One server, as GetServer shows it.
async fn get_server(api: &mut InfraServiceClient<Channel>, server_id: String) -> pb::Server {
    api.get_server(pb::GetServerRequest { server_id })
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap()
}

/// Sends a destroy; the operation as accepted (or the earlier one, for a repeat).
async fn destroy(api: &mut InfraServiceClient<Channel>, server_id: String) -> pb::Operation {
    api.destroy_server(pb::DestroyServerRequest { server_id })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap()
}

/// Makes `request` a takeover of Time4VPS server `server_id` (with `os`, empty = infra's).
fn takeover(request: &mut pb::ProvisionServerRequest, server_id: u64, os: impl Into<String>) {
    request.provider = pb::Provider::Time4vps as i32;
    request.spec = Some(pb::provision_server_request::Spec::Time4vps(
        pb::Time4VpsServerSpec {
            server_id: server_id as i64,
            os: os.into(),
        },
    ));
}

/// Watches an operation to its end, returning every snapshot seen.
async fn watch(api: &mut InfraServiceClient<Channel>, id: &str) -> Vec<pb::Operation> {
    watch_operation(api, id, Duration::from_secs(60)).await
}

fn assert_deploy_credentials(mesh: &TestMesh) {
    let droplet = mesh
        .digitalocean()
        .live_droplets()
        .into_iter()
        .next()
        .unwrap();
    let user_data = droplet.user_data.clone().unwrap();
    let key = app_secret(mesh, "DEPLOY_SSH_KEY");
    // The private key's body never went to the server's user data (its first base64 line is a
    // header every unencrypted Ed25519 key shares; the later ones are this key's own).
    let lines: Vec<&str> = key.lines().collect();
    for line in &lines[2..lines.len() - 1] {
        assert!(
            !user_data.contains(line),
            "the deploy private key is in the user data"
        );
    }
    let public = orchestrator_deploy_keys::public_of(&secrecy::SecretString::from(key)).unwrap();
    let public_body = public.split_whitespace().nth(1).unwrap();
    assert!(
        user_data.contains(public_body),
        "the deploy key in GitHub does not match the droplet's cloud-init"
    );
    assert_eq!(
        mesh.github().secret(ORG, "app1", "DEPLOY_USER").unwrap(),
        b"deploy"
    );
    assert_eq!(
        mesh.github().secret(ORG, "app1", "DEPLOY_HOST").unwrap(),
        b"app1.orchestrator.test"
    );
    let pinned = pinned_host_key(mesh);
    assert!(
        user_data.contains(pinned.split_whitespace().nth(1).unwrap()),
        "the pinned host key is not the one injected by cloud-init"
    );
}

/// Kills infra as soon as `started` holds, restarts it, and watches operation `op_id` to a
/// success.
async fn crash_when(mesh: &mut TestMesh, op_id: &str, started: impl Fn() -> bool) {
    wait_until(
        "the operation never got that far",
        Duration::from_secs(30),
        started,
    )
    .await;
    mesh.restart(INFRA).await;
    let seen = watch(&mut mesh.infra_as("api").await, op_id).await;
    assert_eq!(
        seen.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}\n{}",
        seen.last(),
        mesh.logs(INFRA)
    );
}

/// Logs in to `ip` as DEPLOY_USER with DEPLOY_SSH_KEY, the host key pinned by
/// DEPLOY_KNOWN_HOSTS, all read back from the GitHub emulator (where they were decrypted).
async fn deploy_login(mesh: &TestMesh, ip: &str) {
    let secret = |name| app_secret(mesh, name);
    let known = secret("DEPLOY_KNOWN_HOSTS");
    let line = known
        .lines()
        .find(|l| l.starts_with(&format!("{ip} ")))
        .unwrap_or_else(|| panic!("{ip} is not pinned in {known}"));
    let host_key = line.split_once(' ').unwrap().1.to_owned();
    let key = orchestrator_ssh::AdminKey::from_openssh(&secrecy::SecretString::from(secret(
        "DEPLOY_SSH_KEY",
    )))
    .unwrap();
    let target = orchestrator_ssh::Target {
        host: ip.to_owned(),
        port: mesh.ssh_port(),
        user: secret("DEPLOY_USER"),
        host_key: orchestrator_ssh::HostKey::Pinned(host_key),
    };
    orchestrator_ssh::connect(&target, &key, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the deploy credentials do not log in: {e}"))
        .close()
        .await;
}

/// Why logging in to `ip` as `deploy` with `private_key` (OpenSSH), under the host key
/// DEPLOY_KNOWN_HOSTS pins, fails.
async fn deploy_login_refused(
    mesh: &TestMesh,
    ip: &str,
    private_key: Vec<u8>,
) -> orchestrator_ssh::SshError {
    let key = orchestrator_ssh::AdminKey::from_openssh(&secrecy::SecretString::from(
        String::from_utf8(private_key).unwrap(),
    ))
    .unwrap();
    let target = orchestrator_ssh::Target {
        host: ip.to_owned(),
        port: mesh.ssh_port(),
        user: "deploy".into(),
        host_key: orchestrator_ssh::HostKey::Pinned(pinned_host_key(mesh)),
    };
    orchestrator_ssh::connect(&target, &key, Duration::from_secs(10))
        .await
        .unwrap_err()
}

/// An Actions secret of app1, as GitHub decrypted it.
fn app_secret(mesh: &TestMesh, name: &str) -> String {
    String::from_utf8(mesh.github().secret(ORG, "app1", name).unwrap()).unwrap()
}

/// The host key DEPLOY_KNOWN_HOSTS pins first: `<type> <base64>`.
fn pinned_host_key(mesh: &TestMesh) -> String {
    let known = app_secret(mesh, "DEPLOY_KNOWN_HOSTS");
    known
        .lines()
        .next()
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_and_destroy_on_digitalocean() {
    let mesh = start(None).await;
    let mut api = mesh.infra_as("api").await;
    let mut request = provision("prov-1");
    request.checkout_repository = true;
    let op = accept(&mut api, request.clone()).await;
    let seen = watch(&mut api, &op.id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, pb::OperationState::Succeeded as i32, "{last:?}");
    assert!(
        seen.len() >= 3,
        "progress was streamed: {} snapshots",
        seen.len()
    );
    assert!(
        last.steps
            .iter()
            .all(|s| s.state == pb::OperationStepState::Done as i32),
        "{:?}",
        last.steps
    );
    assert_eq!(mesh.digitalocean().live_droplets().len(), 1);
    for step in &last.steps {
        let (start, end) = (step.start_time.unwrap(), step.end_time.unwrap());
        assert!(
            (end.seconds, end.nanos) >= (start.seconds, start.nanos),
            "{step:?}"
        );
    }
    let records = mesh.cloudflare().records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        Some(records[0].content.clone()),
        mesh.digitalocean().live_droplets()[0].ipv4
    );
    assert_deploy_credentials(&mesh);
    let ready = &last.steps[4];
    assert!(ready.detail.contains("cloud-init done"), "{ready:?}");
    assert_eq!(
        last.steps[5].step,
        pb::OperationStep::RepositoryCheckedOut as i32
    );
    // The checkout: as the deploy user, a clone token on stdin only — one that reads this
    // repository and nothing else, revoked once the checkout is over — kept nowhere by infra.
    let droplet_id = mesh.digitalocean().live_droplets()[0].id;
    let commands = mesh.digitalocean().commands(droplet_id);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(commands[0].user, "orchestrator-admin");
    assert_eq!(commands[0].command, "sudo -u deploy -H bash -s");
    let stdin = String::from_utf8(commands[0].stdin.clone()).unwrap();
    let token = stdin.lines().nth(2).unwrap().to_owned();
    assert!(
        token.starts_with("ghs_"),
        "line 3 of stdin is not the token"
    );
    assert!(stdin.contains(&format!("'{}/acme/app1.git'", mesh.github().url())));
    let mints = mesh.github().stats().token_mints;
    let clone = mints
        .iter()
        .find(|m| m.token == token)
        .expect("GitHub minted the clone token");
    assert_eq!(
        clone.granted_permissions,
        [("contents".to_owned(), "read".to_owned())].into()
    );
    assert_eq!(clone.granted_repositories, Some(vec!["app1".to_owned()]));
    assert!(clone.revoked, "the clone token outlived the checkout");
    let github = mesh.github().url();
    let status = |path| raw::status_with_token(&github, "GET", path, &token, "");
    assert_eq!(
        status("/repos/acme/app1/contents/README.md").await,
        401,
        "a second use of the clone token"
    );
    assert!(!mesh.logs(INFRA).contains(&token));
    mesh.assert_absent_from_tables(
        INFRA,
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &[&token],
    )
    .await;
    // What the workflow will do: log in as the deploy user with the handed-over key, pinning
    // the handed-over host key — on the droplet that cloud-init built.
    let ip = mesh.digitalocean().live_droplets()[0].ipv4.clone().unwrap();
    deploy_login(&mesh, &ip).await;
    // Nothing the deploy credentials hold is a provider credential: none of them, as a token,
    // can delete the droplet or the record.
    let droplet_id = mesh.digitalocean().live_droplets()[0].id;
    for name in [
        "DEPLOY_SSH_KEY",
        "DEPLOY_HOST",
        "DEPLOY_USER",
        "DEPLOY_KNOWN_HOSTS",
    ] {
        let value = app_secret(&mesh, name);
        let token: String = value.split_whitespace().collect::<Vec<_>>().join("");
        let path = format!("/v2/droplets/{droplet_id}");
        let refused =
            raw::status_with_token(&mesh.digitalocean().url(), "DELETE", &path, &token, "").await;
        assert_eq!(refused, 401, "{name} deleted a droplet");
        let zones = raw::status_with_token(
            &mesh.cloudflare().url(),
            "GET",
            "/client/v4/zones",
            &token,
            "",
        )
        .await;
        assert_ne!(zones, 200, "{name} reads Cloudflare");
    }
    assert_eq!(mesh.digitalocean().live_droplets().len(), 1);
    // The same request again: the same operation, no second droplet.
    let again = accept(&mut api, request).await;
    assert_eq!(again.id, op.id);
    assert_eq!(mesh.digitalocean().droplets().len(), 1);

    let server = get_server(&mut api, op.server_id.clone()).await;
    assert_eq!(server.state, pb::ServerState::Ready as i32);
    assert!(server.deploy_key_fingerprint.starts_with("SHA256:"));
    let destroying = destroy(&mut api, op.server_id.clone()).await;
    let done = watch(&mut api, &destroying.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    assert!(mesh.digitalocean().live_droplets().is_empty());
    assert!(mesh.cloudflare().records().is_empty());
    // Destroy is idempotent.
    let again = destroy(&mut api, op.server_id).await;
    assert_eq!(again.id, destroying.id);
    // No private key in infra's storage or logs.
    assert!(!mesh.logs(INFRA).contains("PRIVATE KEY"));
    mesh.assert_absent_from_tables(
        INFRA,
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &["PRIVATE KEY", DO_TOKEN, CF_TOKEN],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_an_infra_crash_still_make_exactly_one_droplet() {
    let mut mesh = start(Some(emu::Faults::mixed(21, 0.3))).await;
    let mut api = mesh.infra_as("api").await;
    let op = accept(&mut api, provision("prov-crash")).await;
    // Crash infra once the droplet exists but before the operation finished.
    let digitalocean = mesh.digitalocean().clone();
    crash_when(&mut mesh, &op.id, move || {
        !digitalocean.droplets().is_empty()
    })
    .await;
    assert_eq!(
        mesh.digitalocean()
            .droplets()
            .iter()
            .filter(|d| !d.deleted)
            .count(),
        1,
        "{:?}",
        mesh.digitalocean().droplets()
    );
    assert_eq!(mesh.cloudflare().records().len(), 1);
    mesh.digitalocean().clear_faults();
    assert_deploy_credentials(&mesh);
}

/// A provision with the user's own DigitalOcean key: read from the vault for that call, seen
/// by the provider exactly, and nowhere in infra's storage, audit records or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_provider_key_comes_from_the_vault_and_is_kept_nowhere() {
    use orchestrator_proto::vault::v1 as vault;
    let (user_token, user_dns_token) = (USERS_OWN_DO_TOKEN, USERS_OWN_CF_TOKEN);
    // An infra that can reach a vault, and the scaffolder that knows the project's owner.
    let mesh = start_mesh(
        ProviderSetup::default(),
        &[
            Service::Vault,
            Service::SecretBroker,
            Service::Scaffolder,
            INFRA,
        ],
    )
    .await;
    let project_id = mesh
        .create_project(
            "u1",
            "u1-app",
            &[("do", "u1", "digitalocean"), ("dns", "u1", "cloudflare")],
        )
        .await
        .unwrap();
    let mut vault_api = mesh.vault_as("api").await;
    for (key, value) in [("digitalocean", user_token), ("cloudflare", user_dns_token)] {
        vault_api
            .put_user_secret(vault::PutUserSecretRequest {
                user_id: "u1".into(),
                key: key.into(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut api = mesh.infra_as("api").await;
    let mut req = provision("prov-user-key");
    req.project_id = project_id;
    req.provider_credentials = Some(pb::CredentialSource {
        source: Some(pb::credential_source::Source::UserVault(
            common::VaultEntryRef {
                user_id: "u1".into(),
                key: "digitalocean".into(),
                version: 0,
            },
        )),
    });
    req.dns_credentials = Some(pb::CredentialSource {
        source: Some(pb::credential_source::Source::UserVault(
            common::VaultEntryRef {
                user_id: "u1".into(),
                key: "cloudflare".into(),
                version: 0,
            },
        )),
    });
    let op = accept(&mut api, req).await;
    let seen = watch(&mut api, &op.id).await;
    assert_eq!(
        seen.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}",
        seen.last()
    );
    let droplets = mesh.digitalocean().live_droplets();
    assert_eq!(droplets.len(), 1);
    assert_eq!(
        droplets[0].token_used, user_token,
        "the provider saw another token"
    );
    let records = mesh.cloudflare().records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].token_used, user_dns_token,
        "Cloudflare saw another token"
    );
    let server = get_server(&mut api, op.server_id.clone()).await;
    assert!(matches!(
        server.dns_credentials.and_then(|c| c.source),
        Some(pb::credential_source::Source::UserVault(ref u)) if u.key == "cloudflare"
    ));
    // Destroy removes the record with the user's DNS key too.
    let destroying = destroy(&mut api, op.server_id).await;
    let done = watch(&mut api, &destroying.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    assert!(mesh.cloudflare().records().is_empty());
    for token in [user_token, user_dns_token] {
        assert!(!mesh.logs(INFRA).contains(token));
    }
    mesh.assert_absent_from_tables(
        INFRA,
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &[user_token, user_dns_token],
    )
    .await;
}

/// Time4VPS: the server bought in advance is reinstalled with the admin key for root, taken
/// over over SSH (deploy user, admin account, root off), its host key learned on that first
/// contact and pinned for the workflow; DNS and the four DEPLOY_* secrets as on DigitalOcean;
/// destroy wipes it (it stays bought) and removes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time4vps_takeover_reinstalls_takes_over_and_pins_the_host_key() {
    let mesh = start(None).await;
    let mut api = mesh.infra_as("api").await;
    let mut req = provision("prov-t4");
    takeover(&mut req, T4_SERVER, "");
    let op = accept(&mut api, req.clone()).await;
    let seen = watch(&mut api, &op.id).await;
    let last = seen.last().unwrap();
    assert_eq!(last.state, pb::OperationState::Succeeded as i32, "{last:?}");
    assert!(
        last.steps
            .iter()
            .all(|s| s.state == pb::OperationStepState::Done as i32),
        "{:?}",
        last.steps
    );

    // Reinstalled once, root getting the orchestrator's admin key (not the deploy key).
    let reinstalls = mesh.time4vps().reinstalls(T4_SERVER);
    assert_eq!(reinstalls.len(), 1);
    assert_eq!(reinstalls[0].os, "kvm-ubuntu-24.04-gpt-x86_64");
    let deploy_key = app_secret(&mesh, "DEPLOY_SSH_KEY");
    let deploy_public =
        orchestrator_deploy_keys::public_of(&secrecy::SecretString::from(deploy_key.clone()))
            .unwrap();
    let root_key = reinstalls[0].ssh_key.clone().unwrap();
    assert_ne!(
        orchestrator_deploy_keys::normalized(&root_key).unwrap(),
        orchestrator_deploy_keys::normalized(&deploy_public).unwrap(),
        "root must not get the deploy key"
    );
    // One takeover script, as root, carrying the deploy public key and never a private key.
    let commands = mesh.time4vps().commands(T4_SERVER);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(
        (commands[0].user.as_str(), commands[0].command.as_str()),
        ("root", "bash -s")
    );
    let script = String::from_utf8(commands[0].stdin.clone()).unwrap();
    assert!(script.contains(&orchestrator_deploy_keys::normalized(&deploy_public).unwrap()));
    assert!(script.contains("add_user deploy '"));
    assert!(script.contains("'PermitRootLogin no'"));
    assert!(!script.contains("PRIVATE KEY"));
    // The host key pinned for the workflow is the server's own, learned on first contact.
    let server_ip = mesh.time4vps().servers()[0].ip.clone();
    let known = app_secret(&mesh, "DEPLOY_KNOWN_HOSTS");
    let host_key = mesh.time4vps().host_key(T4_SERVER).unwrap();
    assert!(
        known.contains(&format!(
            "{server_ip} {}",
            orchestrator_deploy_keys::normalized(&host_key).unwrap()
        )),
        "{known}"
    );
    assert_eq!(
        mesh.github().secret(ORG, "app1", "DEPLOY_USER").unwrap(),
        b"deploy"
    );
    let records = mesh.cloudflare().records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].content, server_ip);
    let server = get_server(&mut api, op.server_id.clone()).await;
    assert_eq!(server.provider, pb::Provider::Time4vps as i32);
    assert_eq!(server.provider_server_id, T4_SERVER.to_string());
    assert_eq!(
        server.host_key_fingerprint,
        orchestrator_deploy_keys::fingerprint(&host_key).unwrap()
    );

    // A server serves one project at a time.
    req.request_id = "prov-t4-again".into();
    req.hostname = "app1-again.orchestrator.test".into();
    let refused = api.provision_server(req).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("already taken over"),
        "{}",
        refused.message()
    );

    // Destroy: wiped by a reinstall with the admin key only; the record goes.
    let destroying = destroy(&mut api, op.server_id).await;
    let done = watch(&mut api, &destroying.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}",
        done.last()
    );
    let reinstalls = mesh.time4vps().reinstalls(T4_SERVER);
    assert_eq!(reinstalls.len(), 2);
    assert_eq!(reinstalls[1].ssh_key.as_deref(), Some(root_key.as_str()));
    assert!(mesh.cloudflare().records().is_empty());
    assert!(!mesh.logs(INFRA).contains("PRIVATE KEY"));
    assert!(!mesh.logs(INFRA).contains(T4_PASSWORD));
    mesh.assert_absent_from_tables(
        INFRA,
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &["PRIVATE KEY", T4_PASSWORD],
    )
    .await;
}

/// A Time4VPS takeover under 30 % faults (some after the reinstall was accepted) with infra
/// killed once the reinstall started: it finishes, and the pinned host key is the one the
/// server has now (a lost reinstall is waited for, never guessed about).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time4vps_takeover_survives_faults_and_an_infra_crash() {
    let mut mesh = start(None).await;
    let mut api = mesh.infra_as("api").await;
    mesh.time4vps().set_faults(emu::Faults::mixed(33, 0.3));
    mesh.cloudflare().set_faults(emu::Faults::mixed(34, 0.3));
    let mut req = provision("prov-t4-crash");
    takeover(&mut req, T4_SERVER, "kvm-debian-12-gpt-x86_64");
    let op = accept(&mut api, req).await;
    let time4vps = mesh.time4vps().clone();
    crash_when(&mut mesh, &op.id, move || {
        !time4vps.reinstalls(T4_SERVER).is_empty()
    })
    .await;
    mesh.time4vps().clear_faults();
    let reinstalls = mesh.time4vps().reinstalls(T4_SERVER);
    assert!(
        reinstalls
            .iter()
            .all(|r| r.os == "kvm-debian-12-gpt-x86_64")
    );
    let server_ip = mesh.time4vps().servers()[0].ip.clone();
    let known = app_secret(&mesh, "DEPLOY_KNOWN_HOSTS");
    let host_key =
        orchestrator_deploy_keys::normalized(&mesh.time4vps().host_key(T4_SERVER).unwrap())
            .unwrap();
    assert!(
        known.contains(&format!("{server_ip} {host_key}")),
        "pinned another key: {known}"
    );
    assert_eq!(
        mesh.time4vps().commands(T4_SERVER).len(),
        1,
        "one takeover after the last reinstall"
    );
    assert_eq!(mesh.cloudflare().records().len(), 1);
}

/// Refusals are final and precise: over DigitalOcean's droplet limit the operation fails with
/// RESOURCE_EXHAUSTED, PROVIDER_QUOTA_EXCEEDED and DigitalOcean's own message (no retry, no
/// second droplet); an unknown Time4VPS server is NOT_FOUND PROVIDER_NOT_FOUND before anything
/// is recorded; a request id reused for
/// another request is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_refusals_fail_the_operation_with_the_providers_reason() {
    let mesh = start_with(ProviderSetup {
        droplet_limit: 1,
        ..ProviderSetup::default()
    })
    .await;
    let mut api = mesh.infra_as("api").await;
    let first = accept(&mut api, provision("quota-1")).await;
    let done = watch(&mut api, &first.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    let mut second = provision("quota-2");
    second.hostname = "app2.orchestrator.test".into();
    let op = accept(&mut api, second).await;
    let failed = watch(&mut api, &op.id).await.pop().unwrap();
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    let error = failed.error.unwrap();
    assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
    assert_eq!(error.reason, "PROVIDER_QUOTA_EXCEEDED");
    assert!(error.message.contains("droplet limit"), "{}", error.message);
    assert_eq!(mesh.digitalocean().droplets().len(), 1);
    let server = get_server(&mut api, op.server_id).await;
    assert_eq!(server.state, pb::ServerState::Failed as i32);

    let mut unknown = provision("t4-unknown");
    takeover(&mut unknown, 999, "");
    unknown.hostname = "app3.orchestrator.test".into();
    // Refused before it is accepted: no operation, no server recorded.
    let refused = api.provision_server(unknown).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let info = refused.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "PROVIDER_NOT_FOUND");
    assert_eq!(
        info.metadata.get("server_id").map(String::as_str),
        Some("999")
    );
    assert!(
        refused.message().contains("Time4VPS"),
        "{}",
        refused.message()
    );
    // The account's own server is accepted (and listed below).
    let mut known = provision("t4-known");
    takeover(&mut known, T4_SERVER, "");
    known.hostname = "app3.orchestrator.test".into();
    accept(&mut api, known).await;

    // Listing: newest first, a page at a time, by provider.
    let list = |page_token: String, provider: pb::Provider| pb::ListServersRequest {
        page_size: 1,
        page_token,
        provider: provider as i32,
        ..Default::default()
    };
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_servers(list(token, pb::Provider::Unspecified))
            .await
            .unwrap()
            .into_inner();
        assert!(page.servers.len() <= 1);
        ids.extend(page.servers.iter().map(|s| {
            (
                s.id.clone(),
                s.create_time.unwrap().seconds,
                s.create_time.unwrap().nanos,
            )
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(
        ids.windows(2).all(|w| (w[0].1, w[0].2) >= (w[1].1, w[1].2)),
        "newest first: {ids:?}"
    );
    let t4 = api
        .list_servers(pb::ListServersRequest {
            provider: pb::Provider::Time4vps as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t4.servers.len(), 1);
    assert_eq!(t4.servers[0].provider, pb::Provider::Time4vps as i32);
    assert_eq!(t4.servers[0].id, ids[0].0, "the takeover was the newest");
    let bad = api
        .list_servers(list("garbage".into(), pb::Provider::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // One live server per hostname.
    let taken = api
        .provision_server(provision("same-host"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");
    assert_eq!(
        taken.get_error_details().error_info().unwrap().reason,
        "HOSTNAME_IN_USE"
    );

    let mut outside = provision("outside-zone");
    outside.hostname = "app.example.com".into();
    let refused = api.provision_server(outside).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let violations = refused.get_error_details().bad_request().cloned().unwrap();
    assert_eq!(violations.field_violations[0].field, "hostname");

    let mut reused = provision("quota-1");
    reused.hostname = "other.orchestrator.test".into();
    let refused = api.provision_server(reused).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let violations = refused.get_error_details().bad_request().cloned().unwrap();
    assert_eq!(violations.field_violations[0].field, "request_id");
}

/// Rotation: the new key is authorized next to the old one, handed to GitHub, then the only
/// one: the old DEPLOY_SSH_KEY no longer logs in, the new one does, under the same pinned host
/// key; no private key is kept by infra; a server that is not ready is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_key_is_rotated_without_a_gap_and_the_old_one_revoked() {
    let mesh = start(None).await;
    let mut api = mesh.infra_as("api").await;
    let op = accept(&mut api, provision("rotate-me")).await;
    assert_eq!(
        watch(&mut api, &op.id).await.pop().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    let ip = mesh.digitalocean().live_droplets()[0].ipv4.clone().unwrap();
    let old_key = mesh.github().secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap();
    deploy_login(&mesh, &ip).await;
    let before = get_server(&mut api, op.server_id.clone()).await;

    let rotation = api
        .rotate_deploy_key(pb::RotateDeployKeyRequest {
            request_id: "rot-1".into(),
            server_id: op.server_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(rotation.kind, pb::OperationKind::RotateDeployKey as i32);
    let done = watch(&mut api, &rotation.id).await.pop().unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    let new_key = mesh.github().secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap();
    assert_ne!(new_key, old_key);
    deploy_login(&mesh, &ip).await;
    // The old key is revoked on the server.
    let host_key = mesh.digitalocean().live_droplets()[0]
        .user_data
        .clone()
        .unwrap();
    let pinned = pinned_host_key(&mesh);
    assert!(host_key.contains(pinned.split_whitespace().nth(1).unwrap()));
    let refused = deploy_login_refused(&mesh, &ip, old_key.clone()).await;
    assert!(
        matches!(refused, orchestrator_ssh::SshError::AuthRefused { .. }),
        "{refused}"
    );
    let after = get_server(&mut api, op.server_id.clone()).await;
    assert_ne!(after.deploy_key_fingerprint, before.deploy_key_fingerprint);
    assert_eq!(after.state, pb::ServerState::Ready as i32);
    assert_eq!(
        after.ready_time, before.ready_time,
        "a rotation does not make the server new"
    );
    // The same request again: the same operation.
    let again = api
        .rotate_deploy_key(pb::RotateDeployKeyRequest {
            request_id: "rot-1".into(),
            server_id: op.server_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(again.id, rotation.id);
    mesh.assert_absent_from_tables(
        INFRA,
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &["PRIVATE KEY"],
    )
    .await;
    assert!(!mesh.logs(INFRA).contains("PRIVATE KEY"));

    // A server that is not ready is refused.
    let destroying = destroy(&mut api, op.server_id.clone()).await;
    watch(&mut api, &destroying.id).await;
    let refused = api
        .rotate_deploy_key(pb::RotateDeployKeyRequest {
            request_id: "rot-2".into(),
            server_id: op.server_id,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "SERVER_NOT_READY"
    );
}

/// Infra killed while the new key is on its way to GitHub (the broker's write held up): the
/// restarted rotation starts over with a fresh key and ends with exactly that key, the one
/// GitHub holds, authorized; the key from before the rotation no longer logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_by_an_infra_crash_starts_over_and_ends_with_one_key() {
    let mut mesh = start(None).await;
    let mut api = mesh.infra_as("api").await;
    let op = accept(&mut api, provision("rotate-crash")).await;
    watch(&mut api, &op.id).await;
    let ip = mesh.digitalocean().live_droplets()[0].ipv4.clone().unwrap();
    let old_key = mesh.github().secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap();
    mesh.github().set_faults_for(
        "PUT /repos/{owner}/{repo}/actions/secrets/{name}",
        orchestrator_github_emulator::Faults {
            latency: Duration::from_millis(1500),
            ..Default::default()
        },
    );
    let rotation = api
        .rotate_deploy_key(pb::RotateDeployKeyRequest {
            request_id: "rot-crash".into(),
            server_id: op.server_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    // Killed once the new key is authorized on the server, while its upload waits.
    let (digitalocean, droplet) = (
        mesh.digitalocean().clone(),
        mesh.digitalocean().live_droplets()[0].id,
    );
    crash_when(&mut mesh, &rotation.id, move || {
        !digitalocean.commands(droplet).is_empty()
    })
    .await;
    let edits: Vec<_> = mesh
        .digitalocean()
        .commands(droplet)
        .into_iter()
        .map(|e| e.command)
        .collect();
    assert!(
        edits.len() >= 3,
        "authorize, (restart) authorize, replace: {edits:?}"
    );
    assert!(
        edits.last().unwrap().contains("authorized_keys.new"),
        "{edits:?}"
    );
    // GitHub's key is the one the server accepts; the one from before is refused.
    deploy_login(&mesh, &ip).await;
    assert_ne!(
        mesh.github().secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap(),
        old_key
    );
    let refused = deploy_login_refused(&mesh, &ip, old_key).await;
    assert!(
        matches!(refused, orchestrator_ssh::SshError::AuthRefused { .. }),
        "{refused}"
    );
}

/// A destroy while the provision runs: the provision stops at its next step (SERVER_DESTROYED),
/// then the droplet it made goes, and the server ends destroyed, not failed or ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_during_the_provision_stops_it_and_removes_what_it_made() {
    let mesh = start(None).await;
    let mut api = mesh.infra_as("api").await;
    let provision_op = accept(&mut api, provision("stopped")).await;
    wait_until("no droplet was created", Duration::from_secs(20), || {
        !mesh.digitalocean().live_droplets().is_empty()
    })
    .await;
    let destroying = destroy(&mut api, provision_op.server_id.clone()).await;
    let destroyed = watch(&mut api, &destroying.id).await.pop().unwrap();
    assert_eq!(
        destroyed.state,
        pb::OperationState::Succeeded as i32,
        "{destroyed:?}"
    );
    let stopped = watch(&mut api, &provision_op.id).await.pop().unwrap();
    assert_eq!(stopped.state, pb::OperationState::Failed as i32);
    assert_eq!(stopped.error.unwrap().reason, "SERVER_DESTROYED");
    assert!(mesh.digitalocean().live_droplets().is_empty());
    assert!(mesh.cloudflare().records().is_empty());
    let server = get_server(&mut api, provision_op.server_id).await;
    assert_eq!(server.state, pb::ServerState::Destroyed as i32);
}

/// Something else answers at the droplet's address with another host key: infra refuses to
/// log in (HOST_KEY_MISMATCH, never retried), the server is not marked ready, and the
/// workflow's DEPLOY_KNOWN_HOSTS pins the injected key, so it would refuse the impostor too.
/// A cloud-init that fails is CLOUD_INIT_FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_host_key_or_a_failed_cloud_init_is_never_ready() {
    let mesh = start_with(ProviderSetup {
        hosts: emu::HostsConfig {
            impostor: true,
            ..emu::HostsConfig::default()
        },
        ..ProviderSetup::default()
    })
    .await;
    let mut api = mesh.infra_as("api").await;
    let op = accept(&mut api, provision("impostor")).await;
    let failed = watch(&mut api, &op.id).await.pop().unwrap();
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    let error = failed.error.unwrap();
    assert_eq!(error.reason, "HOST_KEY_MISMATCH", "{error:?}");
    let ready = failed
        .steps
        .iter()
        .find(|s| s.step == pb::OperationStep::ServerReady as i32)
        .unwrap();
    assert_ne!(ready.state, pb::OperationStepState::Done as i32);
    // The failed provision deleted its droplet (what it injected is still on record).
    assert!(mesh.digitalocean().live_droplets().is_empty());
    let injected = mesh.digitalocean().droplets()[0].user_data.clone().unwrap();
    let pinned = pinned_host_key(&mesh);
    assert!(
        injected.contains(pinned.split_whitespace().nth(1).unwrap()),
        "the pin is the injected key, not the impostor's"
    );

    let mesh = start_with(ProviderSetup {
        hosts: emu::HostsConfig {
            cloud_init_fails: true,
            ..emu::HostsConfig::default()
        },
        ..ProviderSetup::default()
    })
    .await;
    let mut api = mesh.infra_as("api").await;
    let op = accept(&mut api, provision("cloud-init-fails")).await;
    let failed = watch(&mut api, &op.id).await.pop().unwrap();
    let error = failed.error.unwrap();
    assert_eq!(error.reason, "CLOUD_INIT_FAILED", "{error:?}");
    assert!(error.message.contains("status: error"), "{}", error.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_infra_provision_shows_live_progress() {
    let mesh = start(None).await;
    let out = mesh
        .orchctl(
            INFRA,
            &[
                "infra",
                "provision",
                "--project",
                "p1",
                "--hostname",
                "cli.orchestrator.test",
                "--checkout-repository",
            ],
        )
        .await;
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    let bars: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert!(
        bars.len() >= 3,
        "progress was not shown step by step:\n{text}"
    );
    assert!(
        bars.last()
            .unwrap()
            .starts_with("[####################] 6/6"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("done"), "{text}");
    // Then the key rotation, followed the same way.
    let server = text
        .split_whitespace()
        .find(|w| w.starts_with("srv-"))
        .unwrap()
        .to_owned();
    let rotated = mesh
        .orchctl(INFRA, &["infra", "rotate-deploy-key", &server])
        .await;
    let text = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(
        rotated.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(text.contains("[####################] 3/3"), "{text}");
    assert!(text.trim_end().ends_with("done"), "{text}");
}
