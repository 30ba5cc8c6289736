//! Infra end to end with real processes: provisioning on the DigitalOcean emulator with DNS at
//! the Cloudflare emulator and the deploy credentials handed to a real broker (decrypted at the
//! GitHub emulator), under faults and across an infra crash; destroy; a user's own key.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{Launch, Pki, Proc, github_emulator};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_proto::secretbroker::v1 as broker;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_provider_emulators as emu;
use orchestrator_store::testing::TestDatabase;
use tonic::transport::Channel;

const ORG: &str = "acme";
const DO_TOKEN: &str = "do-platform-token";
const CF_TOKEN: &str = "cf-platform-token";

struct Harness {
    pki: Pki,
    db: TestDatabase,
    github: orchestrator_github_emulator::Emulator,
    digitalocean: emu::DigitalOcean,
    cloudflare: emu::Cloudflare,
    broker: Proc,
    infra: Proc,
    api: InfraServiceClient<Channel>,
    files: tempfile::TempDir,
}

async fn infra_launch(
    h_pki: &Pki,
    db: &TestDatabase,
    broker: &Proc,
    digitalocean: &emu::DigitalOcean,
    cloudflare: &emu::Cloudflare,
    files: &std::path::Path,
) -> Launch {
    Launch::new(Service::Infra, h_pki)
        .unwrap()
        .database(&db.url("infra"))
        .env("INFRA_BROKER_ADDR", broker.grpc.to_string())
        .env("DIGITALOCEAN_API_URL", digitalocean.url())
        .env(
            "DIGITALOCEAN_TOKEN_FILE",
            orchestrator_e2e::write_secret(files, "do_token", DO_TOKEN).unwrap(),
        )
        .env("CLOUDFLARE_API_URL", cloudflare.api_base())
        .env(
            "CLOUDFLARE_API_TOKEN_FILE",
            orchestrator_e2e::write_secret(files, "cf_token", CF_TOKEN).unwrap(),
        )
        .env("CLOUDFLARE_ZONE", "orchestrator.test")
        // The same AUDIT_KEY across restarts: keep it in the harness's folder.
        .env(
            "AUDIT_KEY_FILE",
            orchestrator_e2e::write_secret(files, "audit_key", &audit_key(files)).unwrap(),
        )
}

fn audit_key(files: &std::path::Path) -> String {
    let path = files.join("audit_key.value");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return k;
    }
    let k = orchestrator_e2e::random_key();
    std::fs::write(&path, &k).unwrap();
    k
}

async fn start(faults: Option<emu::Faults>) -> Harness {
    let pki = Pki::new().unwrap();
    let files = tempfile::tempdir().unwrap();
    let db = TestDatabase::postgres(&["infra", "secret-broker"]).await;
    let github = github_emulator(ORG, GhConfig::default()).await.unwrap();
    github.create_repository(ORG, "app1");
    let digitalocean = emu::DigitalOcean::start(emu::DoConfig {
        tokens: vec![DO_TOKEN.into(), "users-own-do-token".into()],
        active_after: Duration::from_millis(150),
        address_after: Duration::from_millis(150),
        transient_404_polls: 1,
        ..emu::DoConfig::default()
    })
    .await
    .unwrap();
    let cloudflare = emu::Cloudflare::start(emu::CfConfig {
        tokens: vec![CF_TOKEN.into()],
        zones: vec!["orchestrator.test".into()],
        ..emu::CfConfig::default()
    })
    .await
    .unwrap();
    if let Some(f) = faults {
        digitalocean.set_faults(f.clone());
        cloudflare.set_faults(f);
    }
    let broker = Launch::new(Service::SecretBroker, &pki)
        .unwrap()
        .database(&db.url("secret-broker"))
        .github(&github, ORG)
        .spawn()
        .await
        .unwrap();
    let mut scaffolder = SecretBrokerServiceClient::new(
        broker
            .channel(&pki.client("scaffolder").unwrap())
            .await
            .unwrap(),
    );
    scaffolder
        .register_repository(broker::RegisterRepositoryRequest {
            request_id: "reg".into(),
            project_id: "p1".into(),
            repository: Some(common::RepositoryRef {
                owner: ORG.into(),
                name: "app1".into(),
                id: 0,
            }),
        })
        .await
        .unwrap();
    let infra = infra_launch(&pki, &db, &broker, &digitalocean, &cloudflare, files.path())
        .await
        .spawn()
        .await
        .unwrap();
    let api = InfraServiceClient::new(infra.channel(&pki.client("api").unwrap()).await.unwrap());
    Harness {
        pki,
        db,
        github,
        digitalocean,
        cloudflare,
        broker,
        infra,
        api,
        files,
    }
}

fn provision(request_id: &str) -> pb::ProvisionServerRequest {
    pb::ProvisionServerRequest {
        request_id: request_id.into(),
        project_id: "p1".into(),
        provider: pb::Provider::Digitalocean as i32,
        spec: Some(pb::provision_server_request::Spec::Digitalocean(
            pb::DigitalOceanServerSpec {
                region: "fra1".into(),
                size: "s-1vcpu-1gb".into(),
                image: "ubuntu-24-04-x64".into(),
            },
        )),
        hostname: "app1.orchestrator.test".into(),
        ..Default::default()
    }
}

/// Watches an operation to its end, returning every snapshot seen.
async fn watch(api: &mut InfraServiceClient<Channel>, id: &str) -> Vec<pb::Operation> {
    let mut stream = api
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .unwrap()
    {
        seen.push(item.operation.unwrap());
    }
    seen
}

fn assert_deploy_credentials(h: &Harness) {
    let droplet = h.digitalocean.live_droplets().into_iter().next().unwrap();
    let user_data = droplet.user_data.clone().unwrap();
    let key = String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap()).unwrap();
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
        h.github.secret(ORG, "app1", "DEPLOY_USER").unwrap(),
        b"deploy"
    );
    assert_eq!(
        h.github.secret(ORG, "app1", "DEPLOY_HOST").unwrap(),
        b"app1.orchestrator.test"
    );
    let known =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS").unwrap()).unwrap();
    let pinned = known
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    assert!(
        user_data.contains(&pinned),
        "the pinned host key is not the one injected by cloud-init"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_and_destroy_on_digitalocean() {
    let mut h = start(None).await;
    let op = h
        .api
        .provision_server(provision("prov-1"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let seen = watch(&mut h.api, &op.id).await;
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
    assert_eq!(h.digitalocean.live_droplets().len(), 1);
    let records = h.cloudflare.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        Some(records[0].content.clone()),
        h.digitalocean.live_droplets()[0].ipv4
    );
    assert_deploy_credentials(&h);
    // The same request again: the same operation, no second droplet.
    let again = h
        .api
        .provision_server(provision("prov-1"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(again.id, op.id);
    assert_eq!(h.digitalocean.droplets().len(), 1);

    let server = h
        .api
        .get_server(pb::GetServerRequest {
            server_id: op.server_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap();
    assert_eq!(server.state, pb::ServerState::Ready as i32);
    assert!(server.deploy_key_fingerprint.starts_with("SHA256:"));
    let destroy = h
        .api
        .destroy_server(pb::DestroyServerRequest {
            server_id: op.server_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let done = watch(&mut h.api, &destroy.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    assert!(h.digitalocean.live_droplets().is_empty());
    assert!(h.cloudflare.records().is_empty());
    // Destroy is idempotent.
    let again = h
        .api
        .destroy_server(pb::DestroyServerRequest {
            server_id: op.server_id,
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    assert_eq!(again.id, destroy.id);
    // No private key in infra's storage or logs.
    assert!(!h.infra.logs().contains("PRIVATE KEY"));
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "infra",
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &["PRIVATE KEY", DO_TOKEN, CF_TOKEN],
    )
    .await;
    drop(h.files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_an_infra_crash_still_make_exactly_one_droplet() {
    let mut h = start(Some(emu::Faults::mixed(21, 0.3))).await;
    let op = h
        .api
        .provision_server(provision("prov-crash"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    // Crash infra once the droplet exists but before the operation finished.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.digitalocean.droplets().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no droplet was ever created"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.infra.kill().await;
    let restarted = infra_launch(
        &h.pki,
        &h.db,
        &h.broker,
        &h.digitalocean,
        &h.cloudflare,
        h.files.path(),
    )
    .await
    .spawn()
    .await
    .unwrap();
    let mut api = InfraServiceClient::new(
        restarted
            .channel(&h.pki.client("api").unwrap())
            .await
            .unwrap(),
    );
    let seen = watch(&mut api, &op.id).await;
    assert_eq!(
        seen.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}",
        seen.last()
    );
    assert_eq!(
        h.digitalocean
            .droplets()
            .iter()
            .filter(|d| !d.deleted)
            .count(),
        1,
        "{:?}",
        h.digitalocean.droplets()
    );
    assert_eq!(h.cloudflare.records().len(), 1);
    h.digitalocean.clear_faults();
    assert_deploy_credentials(&h);
    drop(h.api);
}

/// A provision with the user's own DigitalOcean key: read from the vault for that call, seen
/// by the provider exactly, and nowhere in infra's storage, audit records or logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_own_provider_key_comes_from_the_vault_and_is_kept_nowhere() {
    use orchestrator_proto::vault::v1 as vault;
    use orchestrator_proto::vault::v1::vault_service_client::VaultServiceClient;
    let user_token = "users-own-do-token";
    let h = start(None).await;
    let vault_proc = Launch::new(Service::Vault, &h.pki)
        .unwrap()
        .spawn()
        .await
        .unwrap();
    let mut vault_api = VaultServiceClient::new(
        vault_proc
            .channel(&h.pki.client("api").unwrap())
            .await
            .unwrap(),
    );
    vault_api
        .put_user_secret(vault::PutUserSecretRequest {
            user_id: "u1".into(),
            key: "digitalocean".into(),
            value: user_token.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    // An infra that can reach this vault.
    let infra = infra_launch(
        &h.pki,
        &h.db,
        &h.broker,
        &h.digitalocean,
        &h.cloudflare,
        h.files.path(),
    )
    .await
    .env("INFRA_VAULT_ADDR", vault_proc.grpc.to_string())
    .spawn()
    .await
    .unwrap();
    let mut api =
        InfraServiceClient::new(infra.channel(&h.pki.client("api").unwrap()).await.unwrap());
    let mut req = provision("prov-user-key");
    req.provider_credentials = Some(pb::CredentialSource {
        source: Some(pb::credential_source::Source::UserVault(
            common::VaultEntryRef {
                user_id: "u1".into(),
                key: "digitalocean".into(),
                version: 0,
            },
        )),
    });
    let op = api
        .provision_server(req)
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let seen = watch(&mut api, &op.id).await;
    assert_eq!(
        seen.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}",
        seen.last()
    );
    let droplets = h.digitalocean.live_droplets();
    assert_eq!(droplets.len(), 1);
    assert_eq!(
        droplets[0].token_used, user_token,
        "the provider saw another token"
    );
    assert!(!infra.logs().contains(user_token));
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "infra",
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &[user_token],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_infra_provision_shows_live_progress() {
    let h = start(None).await;
    let out = tokio::process::Command::new(orchestrator_e2e::bin("orchctl"))
        .args([
            "infra",
            "provision",
            "--project",
            "p1",
            "--hostname",
            "cli.orchestrator.test",
        ])
        .arg("--pki")
        .arg(h.pki.dir())
        .arg("--target")
        .arg(h.infra.grpc.to_string())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let bars: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert!(
        bars.len() >= 3,
        "progress was not shown step by step:\n{text}"
    );
    assert!(
        bars.last()
            .unwrap()
            .starts_with("[####################] 5/5"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("done"), "{text}");
}
