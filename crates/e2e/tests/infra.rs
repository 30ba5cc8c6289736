//! Infra end to end with real processes: provisioning on the DigitalOcean emulator (readiness
//! checked over SSH against the booted droplet) and Time4VPS takeovers, DNS at the Cloudflare
//! emulator, the deploy credentials handed to a real broker (decrypted at the GitHub emulator
//! and then used to log in), under faults and across an infra crash; destroy; users' own keys.

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
use tonic_types::StatusExt;

const ORG: &str = "acme";
const DO_TOKEN: &str = "do-platform-token";
const CF_TOKEN: &str = "cf-platform-token";
const T4_USER: &str = "t4-platform-user";
const T4_PASSWORD: &str = "t4-platform-password";
/// The Time4VPS server bought in advance.
const T4_SERVER: u64 = 701;

struct Harness {
    pki: Pki,
    db: TestDatabase,
    github: orchestrator_github_emulator::Emulator,
    digitalocean: emu::DigitalOcean,
    cloudflare: emu::Cloudflare,
    time4vps: emu::Time4Vps,
    /// The port the emulated servers answer SSH on.
    ssh_port: u16,
    broker: Proc,
    infra: Proc,
    api: InfraServiceClient<Channel>,
    files: tempfile::TempDir,
}

impl Harness {
    /// Infra as configured for this harness (a restart gets the same settings).
    fn infra_launch(&self) -> Launch {
        infra_launch(
            &self.pki,
            &self.db,
            &self.broker,
            (&self.digitalocean, &self.cloudflare, &self.time4vps),
            (self.ssh_port, &self.github.url()),
            self.files.path(),
        )
    }
}

fn infra_launch(
    h_pki: &Pki,
    db: &TestDatabase,
    broker: &Proc,
    (digitalocean, cloudflare, time4vps): (&emu::DigitalOcean, &emu::Cloudflare, &emu::Time4Vps),
    (ssh_port, github_url): (u16, &str),
    files: &std::path::Path,
) -> Launch {
    Launch::new(Service::Infra, h_pki)
        .unwrap()
        .database(&db.url("infra"))
        .env("INFRA_BROKER_ADDR", broker.grpc.to_string())
        .env("INFRA_SSH_PORT", ssh_port.to_string())
        .env("INFRA_READY_TIMEOUT_SECS", "60")
        .env("INFRA_GIT_URL", github_url)
        .env("TIME4VPS_API_URL", time4vps.url())
        .env("TIME4VPS_USER", T4_USER)
        .env(
            "TIME4VPS_PASSWORD_FILE",
            orchestrator_e2e::write_secret(files, "t4_password", T4_PASSWORD).unwrap(),
        )
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
        // The same AUDIT_KEY and admin key across restarts: kept in the harness's folder.
        .env(
            "AUDIT_KEY_FILE",
            orchestrator_e2e::write_secret(files, "audit_key", &audit_key(files)).unwrap(),
        )
        .env(
            "ORCHESTRATOR_SSH_PRIVATE_KEY_FILE",
            orchestrator_e2e::write_secret(files, "admin_key", &admin_key(files)).unwrap(),
        )
}

fn admin_key(files: &std::path::Path) -> String {
    use secrecy::ExposeSecret as _;
    let path = files.join("admin_key.value");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return k;
    }
    let k = orchestrator_deploy_keys::generate("orchestrator-admin").unwrap();
    std::fs::write(&path, k.private_openssh.expose_secret()).unwrap();
    k.private_openssh.expose_secret().to_owned()
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
    start_with(Setup {
        faults,
        ..Setup::default()
    })
    .await
}

/// How the providers behave for one test.
#[derive(Default)]
struct Setup {
    faults: Option<emu::Faults>,
    /// DigitalOcean's droplet limit per account (0 = none).
    droplet_limit: usize,
    /// How the emulated servers boot (the SSH port is the harness's).
    hosts: emu::HostsConfig,
}

async fn start_with(setup: Setup) -> Harness {
    let Setup {
        faults,
        droplet_limit,
        hosts,
    } = setup;
    let pki = Pki::new().unwrap();
    let files = tempfile::tempdir().unwrap();
    let db = TestDatabase::postgres(&["infra", "secret-broker"]).await;
    let github = github_emulator(ORG, GhConfig::default()).await.unwrap();
    github.create_repository(ORG, "app1");
    // Servers answer SSH on their own loopback addresses, all on one port.
    let ssh_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hosts = emu::HostsConfig {
        ssh_port,
        boot_time: Duration::from_millis(300),
        ..hosts
    };
    let digitalocean = emu::DigitalOcean::start(emu::DoConfig {
        tokens: vec![DO_TOKEN.into(), "users-own-do-token".into()],
        active_after: Duration::from_millis(150),
        address_after: Duration::from_millis(150),
        transient_404_polls: 1,
        droplet_limit,
        hosts: Some(hosts.clone()),
        ..emu::DoConfig::default()
    })
    .await
    .unwrap();
    let [a, b] = orchestrator_e2e::random_key().as_bytes()[..2] else {
        unreachable!()
    };
    let time4vps = emu::Time4Vps::start(emu::T4Config {
        user: T4_USER.into(),
        password: T4_PASSWORD.into(),
        servers: vec![(
            T4_SERVER,
            format!("127.{}.{}.17", a % 200 + 20, b % 250 + 1),
        )],
        task_after: Duration::from_millis(300),
        hosts: Some(hosts),
        ..emu::T4Config::default()
    })
    .await
    .unwrap();
    let cloudflare = emu::Cloudflare::start(emu::CfConfig {
        tokens: vec![CF_TOKEN.into(), "users-own-cf-token".into()],
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
    let infra = infra_launch(
        &pki,
        &db,
        &broker,
        (&digitalocean, &cloudflare, &time4vps),
        (ssh_port, &github.url()),
        files.path(),
    )
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
        time4vps,
        ssh_port,
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
    let mut stream = api
        .watch_operation(pb::WatchOperationRequest {
            operation_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(Some(item))) = tokio::time::timeout_at(deadline, stream.message()).await {
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

/// Kills infra as soon as `started` holds, restarts it, and watches operation `op_id` to a
/// success; the restarted process replaces `h.infra`.
async fn crash_when(h: &mut Harness, op_id: &str, started: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !started() {
        assert!(
            std::time::Instant::now() < deadline,
            "the operation never got that far"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.infra.kill().await;
    h.infra = h.infra_launch().spawn().await.unwrap();
    h.api = InfraServiceClient::new(
        h.infra
            .channel(&h.pki.client("api").unwrap())
            .await
            .unwrap(),
    );
    let seen = watch(&mut h.api, op_id).await;
    assert_eq!(
        seen.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}\n{}",
        seen.last(),
        h.infra.logs()
    );
}

/// Logs in to `ip` as DEPLOY_USER with DEPLOY_SSH_KEY, the host key pinned by
/// DEPLOY_KNOWN_HOSTS, all read back from the GitHub emulator (where they were decrypted).
async fn deploy_login(h: &Harness, ip: &str) {
    let secret = |name| String::from_utf8(h.github.secret(ORG, "app1", name).unwrap()).unwrap();
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
        port: h.ssh_port,
        user: secret("DEPLOY_USER"),
        host_key: orchestrator_ssh::HostKey::Pinned(host_key),
    };
    orchestrator_ssh::connect(&target, &key, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the deploy credentials do not log in: {e}"))
        .close()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_and_destroy_on_digitalocean() {
    let mut h = start(None).await;
    let mut request = provision("prov-1");
    request.checkout_repository = true;
    let op = accept(&mut h.api, request.clone()).await;
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
    for step in &last.steps {
        let (start, end) = (step.start_time.unwrap(), step.end_time.unwrap());
        assert!(
            (end.seconds, end.nanos) >= (start.seconds, start.nanos),
            "{step:?}"
        );
    }
    let records = h.cloudflare.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        Some(records[0].content.clone()),
        h.digitalocean.live_droplets()[0].ipv4
    );
    assert_deploy_credentials(&h);
    let ready = &last.steps[4];
    assert!(ready.detail.contains("cloud-init done"), "{ready:?}");
    assert_eq!(
        last.steps[5].step,
        pb::OperationStep::RepositoryCheckedOut as i32
    );
    // The checkout: as the deploy user, a clone token on stdin only — one that reads this
    // repository and nothing else — kept nowhere by infra.
    let droplet_id = h.digitalocean.live_droplets()[0].id;
    let commands = h.digitalocean.commands(droplet_id);
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(commands[0].user, "orchestrator-admin");
    assert_eq!(commands[0].command, "sudo -u deploy -H bash -s");
    let stdin = String::from_utf8(commands[0].stdin.clone()).unwrap();
    let token = stdin.lines().nth(2).unwrap().to_owned();
    assert!(
        token.starts_with("ghs_"),
        "line 3 of stdin is not the token"
    );
    assert!(stdin.contains(&format!("'{}/acme/app1.git'", h.github.url())));
    let status = |path: &'static str| {
        let (url, token) = (h.github.url(), token.clone());
        async move { orchestrator_e2e::raw_http(&url, "GET", path, &token, "").await }
    };
    assert_eq!(
        status("/repos/acme/app1/contents/README.md").await,
        404,
        "read access, no such file"
    );
    assert_eq!(
        status("/repos/acme/app1/actions/secrets/public-key").await,
        403
    );
    assert!(!h.infra.logs().contains(&token));
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "infra",
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &[&token],
    )
    .await;
    // What the workflow will do: log in as the deploy user with the handed-over key, pinning
    // the handed-over host key — on the droplet that cloud-init built.
    let ip = h.digitalocean.live_droplets()[0].ipv4.clone().unwrap();
    deploy_login(&h, &ip).await;
    // Nothing the deploy credentials hold is a provider credential: none of them, as a token,
    // can delete the droplet or the record.
    let droplet_id = h.digitalocean.live_droplets()[0].id;
    for name in [
        "DEPLOY_SSH_KEY",
        "DEPLOY_HOST",
        "DEPLOY_USER",
        "DEPLOY_KNOWN_HOSTS",
    ] {
        let value = String::from_utf8(h.github.secret(ORG, "app1", name).unwrap()).unwrap();
        let token: String = value.split_whitespace().collect::<Vec<_>>().join("");
        let path = format!("/v2/droplets/{droplet_id}");
        let refused =
            orchestrator_e2e::raw_http(&h.digitalocean.url(), "DELETE", &path, &token, "").await;
        assert_eq!(refused, 401, "{name} deleted a droplet");
        let zones =
            orchestrator_e2e::raw_http(&h.cloudflare.url(), "GET", "/client/v4/zones", &token, "")
                .await;
        assert_ne!(zones, 200, "{name} reads Cloudflare");
    }
    assert_eq!(h.digitalocean.live_droplets().len(), 1);
    // The same request again: the same operation, no second droplet.
    let again = accept(&mut h.api, request).await;
    assert_eq!(again.id, op.id);
    assert_eq!(h.digitalocean.droplets().len(), 1);

    let server = get_server(&mut h.api, op.server_id.clone()).await;
    assert_eq!(server.state, pb::ServerState::Ready as i32);
    assert!(server.deploy_key_fingerprint.starts_with("SHA256:"));
    let destroying = destroy(&mut h.api, op.server_id.clone()).await;
    let done = watch(&mut h.api, &destroying.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    assert!(h.digitalocean.live_droplets().is_empty());
    assert!(h.cloudflare.records().is_empty());
    // Destroy is idempotent.
    let again = destroy(&mut h.api, op.server_id).await;
    assert_eq!(again.id, destroying.id);
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
    let op = accept(&mut h.api, provision("prov-crash")).await;
    // Crash infra once the droplet exists but before the operation finished.
    let digitalocean = h.digitalocean.clone();
    crash_when(&mut h, &op.id, move || !digitalocean.droplets().is_empty()).await;
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
    let user_dns_token = "users-own-cf-token";
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
    // An infra that can reach this vault.
    let infra = h
        .infra_launch()
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
    let droplets = h.digitalocean.live_droplets();
    assert_eq!(droplets.len(), 1);
    assert_eq!(
        droplets[0].token_used, user_token,
        "the provider saw another token"
    );
    let records = h.cloudflare.records();
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
    assert!(h.cloudflare.records().is_empty());
    for token in [user_token, user_dns_token] {
        assert!(!infra.logs().contains(token));
    }
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "infra",
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
    let mut h = start(None).await;
    let mut req = provision("prov-t4");
    takeover(&mut req, T4_SERVER, "");
    let op = accept(&mut h.api, req.clone()).await;
    let seen = watch(&mut h.api, &op.id).await;
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
    let reinstalls = h.time4vps.reinstalls(T4_SERVER);
    assert_eq!(reinstalls.len(), 1);
    assert_eq!(reinstalls[0].os, "kvm-ubuntu-24.04-gpt-x86_64");
    let deploy_key =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap()).unwrap();
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
    let commands = h.time4vps.commands(T4_SERVER);
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
    let server_ip = h.time4vps.servers()[0].ip.clone();
    let known =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS").unwrap()).unwrap();
    let host_key = h.time4vps.host_key(T4_SERVER).unwrap();
    assert!(
        known.contains(&format!(
            "{server_ip} {}",
            orchestrator_deploy_keys::normalized(&host_key).unwrap()
        )),
        "{known}"
    );
    assert_eq!(
        h.github.secret(ORG, "app1", "DEPLOY_USER").unwrap(),
        b"deploy"
    );
    let records = h.cloudflare.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].content, server_ip);
    let server = get_server(&mut h.api, op.server_id.clone()).await;
    assert_eq!(server.provider, pb::Provider::Time4vps as i32);
    assert_eq!(server.provider_server_id, T4_SERVER.to_string());
    assert_eq!(
        server.host_key_fingerprint,
        orchestrator_deploy_keys::fingerprint(&host_key).unwrap()
    );

    // A server serves one project at a time.
    req.request_id = "prov-t4-again".into();
    req.hostname = "app1-again.orchestrator.test".into();
    let refused = h.api.provision_server(req).await.unwrap_err();
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
    let destroying = destroy(&mut h.api, op.server_id).await;
    let done = watch(&mut h.api, &destroying.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32,
        "{:?}",
        done.last()
    );
    let reinstalls = h.time4vps.reinstalls(T4_SERVER);
    assert_eq!(reinstalls.len(), 2);
    assert_eq!(reinstalls[1].ssh_key.as_deref(), Some(root_key.as_str()));
    assert!(h.cloudflare.records().is_empty());
    assert!(!h.infra.logs().contains("PRIVATE KEY"));
    assert!(!h.infra.logs().contains(T4_PASSWORD));
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "infra",
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
    let mut h = start(None).await;
    h.time4vps.set_faults(emu::Faults::mixed(33, 0.3));
    h.cloudflare.set_faults(emu::Faults::mixed(34, 0.3));
    let mut req = provision("prov-t4-crash");
    takeover(&mut req, T4_SERVER, "kvm-debian-12-gpt-x86_64");
    let mut api = h.api.clone();
    let op = accept(&mut api, req).await;
    let time4vps = h.time4vps.clone();
    crash_when(&mut h, &op.id, move || {
        !time4vps.reinstalls(T4_SERVER).is_empty()
    })
    .await;
    h.time4vps.clear_faults();
    let reinstalls = h.time4vps.reinstalls(T4_SERVER);
    assert!(
        reinstalls
            .iter()
            .all(|r| r.os == "kvm-debian-12-gpt-x86_64")
    );
    let server_ip = h.time4vps.servers()[0].ip.clone();
    let known =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS").unwrap()).unwrap();
    let host_key =
        orchestrator_deploy_keys::normalized(&h.time4vps.host_key(T4_SERVER).unwrap()).unwrap();
    assert!(
        known.contains(&format!("{server_ip} {host_key}")),
        "pinned another key: {known}"
    );
    assert_eq!(
        h.time4vps.commands(T4_SERVER).len(),
        1,
        "one takeover after the last reinstall"
    );
    assert_eq!(h.cloudflare.records().len(), 1);
}

/// Refusals are final and precise: over DigitalOcean's droplet limit the operation fails with
/// RESOURCE_EXHAUSTED, PROVIDER_QUOTA_EXCEEDED and DigitalOcean's own message (no retry, no
/// second droplet); an unknown Time4VPS server is PROVIDER_NOT_FOUND; a request id reused for
/// another request is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_refusals_fail_the_operation_with_the_providers_reason() {
    let mut h = start_with(Setup {
        droplet_limit: 1,
        ..Setup::default()
    })
    .await;
    let first = accept(&mut h.api, provision("quota-1")).await;
    let done = watch(&mut h.api, &first.id).await;
    assert_eq!(
        done.last().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    let mut second = provision("quota-2");
    second.hostname = "app2.orchestrator.test".into();
    let op = accept(&mut h.api, second).await;
    let failed = watch(&mut h.api, &op.id).await.pop().unwrap();
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    let error = failed.error.unwrap();
    assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
    assert_eq!(error.reason, "PROVIDER_QUOTA_EXCEEDED");
    assert!(error.message.contains("droplet limit"), "{}", error.message);
    assert_eq!(h.digitalocean.droplets().len(), 1);
    let server = get_server(&mut h.api, op.server_id).await;
    assert_eq!(server.state, pb::ServerState::Failed as i32);

    let mut unknown = provision("t4-unknown");
    takeover(&mut unknown, 999, "");
    unknown.hostname = "app3.orchestrator.test".into();
    let op = accept(&mut h.api, unknown).await;
    let failed = watch(&mut h.api, &op.id).await.pop().unwrap();
    let error = failed.error.unwrap();
    assert_eq!(error.reason, "PROVIDER_NOT_FOUND", "{error:?}");
    assert!(error.message.contains("Time4VPS"), "{}", error.message);

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
        let page = h
            .api
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
    let t4 = h
        .api
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
    let bad = h
        .api
        .list_servers(list("garbage".into(), pb::Provider::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // One live server per hostname.
    let taken = h
        .api
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
    let refused = h.api.provision_server(outside).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let violations = refused.get_error_details().bad_request().cloned().unwrap();
    assert_eq!(violations.field_violations[0].field, "hostname");

    let mut reused = provision("quota-1");
    reused.hostname = "other.orchestrator.test".into();
    let refused = h.api.provision_server(reused).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let violations = refused.get_error_details().bad_request().cloned().unwrap();
    assert_eq!(violations.field_violations[0].field, "request_id");
}

/// Rotation: the new key is authorized next to the old one, handed to GitHub, then the only
/// one: the old DEPLOY_SSH_KEY no longer logs in, the new one does, under the same pinned host
/// key; no private key is kept by infra; a server that is not ready is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_key_is_rotated_without_a_gap_and_the_old_one_revoked() {
    let mut h = start(None).await;
    let op = accept(&mut h.api, provision("rotate-me")).await;
    assert_eq!(
        watch(&mut h.api, &op.id).await.pop().unwrap().state,
        pb::OperationState::Succeeded as i32
    );
    let ip = h.digitalocean.live_droplets()[0].ipv4.clone().unwrap();
    let old_key = h.github.secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap();
    deploy_login(&h, &ip).await;
    let before = get_server(&mut h.api, op.server_id.clone()).await;

    let rotation = h
        .api
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
    let done = watch(&mut h.api, &rotation.id).await.pop().unwrap();
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    let new_key = h.github.secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap();
    assert_ne!(new_key, old_key);
    deploy_login(&h, &ip).await;
    // The old key is revoked on the server.
    let old = orchestrator_ssh::AdminKey::from_openssh(&secrecy::SecretString::from(
        String::from_utf8(old_key.clone()).unwrap(),
    ))
    .unwrap();
    let host_key = h.digitalocean.live_droplets()[0].user_data.clone().unwrap();
    let pinned =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS").unwrap()).unwrap();
    let pinned = pinned
        .lines()
        .next()
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1
        .to_owned();
    assert!(host_key.contains(pinned.split_whitespace().nth(1).unwrap()));
    let refused = orchestrator_ssh::connect(
        &orchestrator_ssh::Target {
            host: ip.clone(),
            port: h.ssh_port,
            user: "deploy".into(),
            host_key: orchestrator_ssh::HostKey::Pinned(pinned),
        },
        &old,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, orchestrator_ssh::SshError::AuthRefused { .. }),
        "{refused}"
    );
    let after = get_server(&mut h.api, op.server_id.clone()).await;
    assert_ne!(after.deploy_key_fingerprint, before.deploy_key_fingerprint);
    assert_eq!(after.state, pb::ServerState::Ready as i32);
    assert_eq!(
        after.ready_time, before.ready_time,
        "a rotation does not make the server new"
    );
    // The same request again: the same operation.
    let again = h
        .api
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
    orchestrator_e2e::assert_absent_from_tables(
        &h.db,
        "infra",
        &["infra.servers", "infra.operations", "infra.audit_log"],
        &["PRIVATE KEY"],
    )
    .await;
    assert!(!h.infra.logs().contains("PRIVATE KEY"));

    // A server that is not ready is refused.
    let destroying = destroy(&mut h.api, op.server_id.clone()).await;
    watch(&mut h.api, &destroying.id).await;
    let refused = h
        .api
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
    let mut h = start(None).await;
    let op = accept(&mut h.api, provision("rotate-crash")).await;
    watch(&mut h.api, &op.id).await;
    let ip = h.digitalocean.live_droplets()[0].ipv4.clone().unwrap();
    let old_key = h.github.secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap();
    h.github.set_faults_for(
        "PUT /repos/{owner}/{repo}/actions/secrets/{name}",
        orchestrator_github_emulator::Faults {
            latency: Duration::from_millis(1500),
            ..Default::default()
        },
    );
    let rotation = h
        .api
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
    let (digitalocean, droplet) = (h.digitalocean.clone(), h.digitalocean.live_droplets()[0].id);
    crash_when(&mut h, &rotation.id, move || {
        !digitalocean.commands(droplet).is_empty()
    })
    .await;
    let edits: Vec<_> = h
        .digitalocean
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
    deploy_login(&h, &ip).await;
    assert_ne!(
        h.github.secret(ORG, "app1", "DEPLOY_SSH_KEY").unwrap(),
        old_key
    );
    let old = orchestrator_ssh::AdminKey::from_openssh(&secrecy::SecretString::from(
        String::from_utf8(old_key).unwrap(),
    ))
    .unwrap();
    let known =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS").unwrap()).unwrap();
    let pinned = known
        .lines()
        .next()
        .unwrap()
        .split_once(' ')
        .unwrap()
        .1
        .to_owned();
    let target = orchestrator_ssh::Target {
        host: ip,
        port: h.ssh_port,
        user: "deploy".into(),
        host_key: orchestrator_ssh::HostKey::Pinned(pinned),
    };
    let refused = orchestrator_ssh::connect(&target, &old, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, orchestrator_ssh::SshError::AuthRefused { .. }),
        "{refused}"
    );
}

/// A destroy while the provision runs: the provision stops at its next step (SERVER_DESTROYED),
/// then the droplet it made goes, and the server ends destroyed, not failed or ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroy_during_the_provision_stops_it_and_removes_what_it_made() {
    let mut h = start(None).await;
    let provision_op = accept(&mut h.api, provision("stopped")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.digitalocean.live_droplets().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no droplet was created"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let destroying = destroy(&mut h.api, provision_op.server_id.clone()).await;
    let destroyed = watch(&mut h.api, &destroying.id).await.pop().unwrap();
    assert_eq!(
        destroyed.state,
        pb::OperationState::Succeeded as i32,
        "{destroyed:?}"
    );
    let stopped = watch(&mut h.api, &provision_op.id).await.pop().unwrap();
    assert_eq!(stopped.state, pb::OperationState::Failed as i32);
    assert_eq!(stopped.error.unwrap().reason, "SERVER_DESTROYED");
    assert!(h.digitalocean.live_droplets().is_empty());
    assert!(h.cloudflare.records().is_empty());
    let server = get_server(&mut h.api, provision_op.server_id).await;
    assert_eq!(server.state, pb::ServerState::Destroyed as i32);
}

/// Something else answers at the droplet's address with another host key: infra refuses to
/// log in (HOST_KEY_MISMATCH, never retried), the server is not marked ready, and the
/// workflow's DEPLOY_KNOWN_HOSTS pins the injected key, so it would refuse the impostor too.
/// A cloud-init that fails is CLOUD_INIT_FAILED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_host_key_or_a_failed_cloud_init_is_never_ready() {
    let mut h = start_with(Setup {
        hosts: emu::HostsConfig {
            impostor: true,
            ..emu::HostsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let op = accept(&mut h.api, provision("impostor")).await;
    let failed = watch(&mut h.api, &op.id).await.pop().unwrap();
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
    let known =
        String::from_utf8(h.github.secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS").unwrap()).unwrap();
    let injected = h.digitalocean.live_droplets()[0].user_data.clone().unwrap();
    let pinned = known
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    assert!(
        injected.contains(&pinned),
        "the pin is the injected key, not the impostor's"
    );

    let mut h = start_with(Setup {
        hosts: emu::HostsConfig {
            cloud_init_fails: true,
            ..emu::HostsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let op = accept(&mut h.api, provision("cloud-init-fails")).await;
    let failed = watch(&mut h.api, &op.id).await.pop().unwrap();
    let error = failed.error.unwrap();
    assert_eq!(error.reason, "CLOUD_INIT_FAILED", "{error:?}");
    assert!(error.message.contains("status: error"), "{}", error.message);
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
            "--checkout-repository",
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
    let rotated = tokio::process::Command::new(orchestrator_e2e::bin("orchctl"))
        .args(["infra", "rotate-deploy-key", &server])
        .arg("--pki")
        .arg(h.pki.dir())
        .arg("--target")
        .arg(h.infra.grpc.to_string())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(
        rotated.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(text.contains("[####################] 3/3"), "{text}");
    assert!(text.trim_end().ends_with("done"), "{text}");
}
