//! The secret broker over real mTLS, against the GitHub emulator: values sealed for the
//! repository (and decrypted there), references only in our storage, GitHub's rules checked
//! before any call, pacing, faults, foreign secrets untouched, scoped tokens.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{Launch, Pki, Proc, github_emulator};
use orchestrator_github_emulator::{Config, Emulator, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_store::testing::TestDatabase;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const ORG: &str = "acme";

struct Harness {
    pki: Pki,
    _db: TestDatabase,
    github: Emulator,
    broker: Proc,
    api: SecretBrokerServiceClient<Channel>,
    scaffolder: SecretBrokerServiceClient<Channel>,
    infra: SecretBrokerServiceClient<Channel>,
}

async fn client(proc: &Proc, pki: &Pki, name: &str) -> SecretBrokerServiceClient<Channel> {
    SecretBrokerServiceClient::new(proc.channel(&pki.client(name).unwrap()).await.unwrap())
}

async fn start(config: Config, tweak: impl FnOnce(Launch) -> Launch) -> Harness {
    let pki = Pki::new().unwrap();
    let db = TestDatabase::postgres(&["secret-broker"]).await;
    let github = github_emulator(ORG, config).await.unwrap();
    github.create_repository(ORG, "app1");
    let launch = Launch::new(Service::SecretBroker, &pki)
        .unwrap()
        .database(&db.url("secret-broker"))
        .github(&github, ORG);
    let broker = tweak(launch).spawn().await.unwrap();
    let (api, scaffolder, infra) = (
        client(&broker, &pki, "api").await,
        client(&broker, &pki, "scaffolder").await,
        client(&broker, &pki, "infra").await,
    );
    let mut h = Harness {
        pki,
        _db: db,
        github,
        broker,
        api,
        scaffolder,
        infra,
    };
    h.scaffolder
        .register_repository(pb::RegisterRepositoryRequest {
            request_id: "reg-1".into(),
            project_id: "p1".into(),
            repository: Some(common::RepositoryRef {
                owner: ORG.into(),
                name: "app1".into(),
                id: 0,
            }),
        })
        .await
        .unwrap();
    h
}

fn secrets(request_id: &str, pairs: &[(&str, &[u8])]) -> pb::SetProjectSecretsRequest {
    pb::SetProjectSecretsRequest {
        request_id: request_id.into(),
        project_id: "p1".into(),
        secrets: pairs
            .iter()
            .map(|(n, v)| common::ProjectSecretValue {
                name: (*n).into(),
                value: v.to_vec(),
            })
            .collect(),
    }
}

fn outcomes(results: &[common::SecretWriteResult]) -> Vec<(String, i32)> {
    results
        .iter()
        .map(|r| (r.name.clone(), r.outcome))
        .collect()
}

const CREATED: i32 = common::SecretWriteOutcome::Created as i32;
const UPDATED: i32 = common::SecretWriteOutcome::Updated as i32;

/// A request id is the caller's: two projects using the same one for the same secret both get
/// their value written (the second is not answered from the first one's record).
#[tokio::test]
async fn the_same_request_id_in_two_projects_writes_both() {
    let mut h = start(Config::default(), |l| l).await;
    h.github.create_repository(ORG, "app2");
    h.scaffolder
        .register_repository(pb::RegisterRepositoryRequest {
            request_id: "reg-2".into(),
            project_id: "p2".into(),
            repository: Some(common::RepositoryRef {
                owner: ORG.into(),
                name: "app2".into(),
                id: 0,
            }),
        })
        .await
        .unwrap();
    h.api
        .set_project_secrets(secrets("same", &[("TOKEN", b"for-p1")]))
        .await
        .unwrap();
    let mut second = secrets("same", &[("TOKEN", b"for-p2")]);
    second.project_id = "p2".into();
    let results = h
        .api
        .set_project_secrets(second)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&results), vec![("TOKEN".into(), CREATED)]);
    assert_eq!(h.github.secret(ORG, "app2", "TOKEN").unwrap(), b"for-p2");
    assert_eq!(h.github.secret(ORG, "app1", "TOKEN").unwrap(), b"for-p1");
}

#[tokio::test]
async fn a_pushed_value_decrypts_at_github_and_only_a_reference_stays() {
    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let mut h = start(Config::default(), |l| l.env("RUST_LOG", "trace")).await;
    let results = h
        .api
        .set_project_secrets(secrets(
            "r1",
            &[
                ("telegram_token", canary.as_bytes()),
                ("STRIPE_KEY", b"sk_test"),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        outcomes(&results),
        vec![
            ("TELEGRAM_TOKEN".into(), CREATED),
            ("STRIPE_KEY".into(), CREATED)
        ]
    );
    // GitHub could read it: the emulator decrypted the sealed box with the repository's key.
    assert_eq!(
        h.github.secret(ORG, "app1", "TELEGRAM_TOKEN").unwrap(),
        canary.as_bytes()
    );
    let stats = h.github.stats();
    assert_eq!(stats.token_mints.len(), 1, "one token for the batch");
    assert_eq!(
        stats.public_key_fetches, 1,
        "one public key fetch for the batch"
    );
    assert_eq!(stats.token_mints[0].repositories, vec!["app1".to_owned()]);
    assert_eq!(
        stats.token_mints[0]
            .permissions
            .get("secrets")
            .map(String::as_str),
        Some("write")
    );

    let list = h
        .api
        .list_project_secrets(pb::ListProjectSecretsRequest {
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list
        .secrets
        .iter()
        .map(|s| (s.name.clone(), s.presence))
        .collect();
    let present = common::SecretPresence::Present as i32;
    assert_eq!(
        names,
        vec![
            ("STRIPE_KEY".into(), present),
            ("TELEGRAM_TOKEN".into(), present)
        ]
    );
    assert!(
        list.secrets
            .iter()
            .all(|s| !s.key_id.is_empty() && s.github_update_time.is_some())
    );

    // A second write updates; the same request id again writes nothing and answers the same.
    let again = h
        .api
        .set_project_secrets(secrets("r2", &[("TELEGRAM_TOKEN", b"second")]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&again), vec![("TELEGRAM_TOKEN".into(), UPDATED)]);
    let puts_before = h.github.stats().secret_writes.len();
    let replay = h
        .api
        .set_project_secrets(secrets("r2", &[("TELEGRAM_TOKEN", b"second")]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&replay), vec![("TELEGRAM_TOKEN".into(), UPDATED)]);
    assert_eq!(h.github.stats().secret_writes.len(), puts_before);

    // The canary is nowhere in the broker's logs (trace level) or storage.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.broker.logs().contains(&canary));
    orchestrator_e2e::assert_absent_from_tables(
        &h._db,
        "secret-broker",
        &[
            "secret_broker.repositories",
            "secret_broker.secret_refs",
            "secret_broker.write_requests",
            "secret_broker.installation_pacing",
            "secret_broker.audit_log",
        ],
        &[&canary],
    )
    .await;
}

#[tokio::test]
async fn github_rules_are_checked_before_any_call() {
    let mut h = start(Config::default(), |l| l).await;
    let before = h.github.stats().requests.values().sum::<usize>();
    let big = vec![b'x'; 48 * 1024 + 1];
    let err = h
        .api
        .set_project_secrets(secrets(
            "bad",
            &[
                ("1ABC", b"v"),
                ("GITHUB_TOKEN", b"v"),
                ("my-name", b"v"),
                ("Dup", b"v"),
                ("DUP", b"v"),
                ("DEPLOY_HOST", b"v"),
                ("BIG", &big),
                ("EMPTY", b""),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<_> = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|f| f.field.clone())
        .collect();
    for field in [
        "secrets[0].name",
        "secrets[1].name",
        "secrets[2].name",
        "secrets[4].name",
        "secrets[5].name",
        "secrets[6].value",
        "secrets[7].value",
    ] {
        assert!(
            fields.contains(&field.to_owned()),
            "{field} not in {fields:?}"
        );
    }
    assert_eq!(
        h.github.stats().requests.values().sum::<usize>(),
        before,
        "GitHub was called"
    );
    assert!(h.github.secret_names(ORG, "app1").is_empty());
    // Unknown project: NOT_FOUND, nothing called.
    let mut req = secrets("x", &[("A", b"v")]);
    req.project_id = "nope".into();
    assert_eq!(
        h.api.set_project_secrets(req).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn deletes_never_touch_foreign_secrets_and_reconcile_reports_drift() {
    let mut h = start(Config::default(), |l| l).await;
    h.github
        .put_secret_directly(ORG, "app1", "FOREIGN", b"someone else's");
    h.api
        .set_project_secrets(secrets(
            "r1",
            &[("OURS", b"v"), ("KEPT", b"v"), ("GONE", b"v")],
        ))
        .await
        .unwrap();
    let err = h
        .api
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: "p1".into(),
            name: "FOREIGN".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(h.github.secret(ORG, "app1", "FOREIGN").is_some());
    let deleted = h
        .api
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: "p1".into(),
            name: "ours".into(),
        })
        .await
        .unwrap();
    assert!(deleted.into_inner().deleted_at_github);
    assert!(h.github.secret(ORG, "app1", "OURS").is_none());

    // Someone deletes GONE and rewrites KEPT behind our back.
    let token_free_edit = |name: &str| h.github.put_secret_directly(ORG, "app1", name, b"changed");
    tokio::time::sleep(Duration::from_millis(1100)).await; // updated_at has second resolution
    token_free_edit("KEPT");
    let reconcile = h
        .api
        .reconcile_project_secrets(pb::ReconcileProjectSecretsRequest {
            project_id: "p1".into(),
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<_> = reconcile
        .findings
        .iter()
        .map(|f| (f.name.clone(), f.kind))
        .collect();
    assert!(
        kinds.contains(&("KEPT".into(), pb::ReconcileFindingKind::Drifted as i32)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(
            "FOREIGN".into(),
            pb::ReconcileFindingKind::Unexpected as i32
        )),
        "{kinds:?}"
    );
    assert_eq!(reconcile.in_sync_count, 1, "{kinds:?}");
    assert!(
        h.github.secret(ORG, "app1", "FOREIGN").is_some(),
        "reconcile touched a foreign secret"
    );
}

#[tokio::test]
async fn a_crash_between_put_and_record_is_repaired_by_reconcile() {
    let mut h = start(Config::default(), |l| l).await;
    h.api
        .set_project_secrets(secrets("r1", &[("CRASHED", b"v")]))
        .await
        .unwrap();
    // The state a crash after GitHub's 201 and before our record leaves behind.
    let url = h._db.admin_url("secret-broker");
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(
        secrecy::ExposeSecret::expose_secret(&url),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE secret_broker.secret_refs SET state = 'pending', github_updated_at = NULL WHERE name = 'CRASHED'")
        .execute(&mut conn)
        .await
        .unwrap();
    let list = h
        .api
        .list_project_secrets(pb::ListProjectSecretsRequest {
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Pending as i32
    );
    let reconcile = h
        .api
        .reconcile_project_secrets(pb::ReconcileProjectSecretsRequest {
            project_id: "p1".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reconcile.findings.len(), 1);
    assert_eq!(
        reconcile.findings[0].kind,
        pb::ReconcileFindingKind::Recovered as i32
    );
    assert!(reconcile.findings[0].repaired);
    let list = h
        .api
        .list_project_secrets(pb::ListProjectSecretsRequest {
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Present as i32
    );
}

#[tokio::test]
async fn infra_writes_deploy_credentials_only_and_gets_clone_tokens_that_cannot_write() {
    let mut h = start(Config::default(), |l| l).await;
    // The key first, alone (infra hands it over as soon as it exists), then the rest.
    let key_only = pb::DeployCredentials {
        ssh_private_key: b"-----BEGIN OPENSSH PRIVATE KEY-----\nearly\n".to_vec(),
        ..Default::default()
    };
    let early = h
        .infra
        .set_deploy_credentials(pb::SetDeployCredentialsRequest {
            request_id: "d0".into(),
            project_id: "p1".into(),
            credentials: Some(key_only),
            server_id: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&early), vec![("DEPLOY_SSH_KEY".into(), CREATED)]);
    let none = h
        .infra
        .set_deploy_credentials(pb::SetDeployCredentialsRequest {
            request_id: "d-".into(),
            project_id: "p1".into(),
            credentials: None,
            server_id: "s1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::InvalidArgument);
    let creds = pb::DeployCredentials {
        host: "203.0.113.7".into(),
        user: "deploy".into(),
        ssh_private_key: b"-----BEGIN OPENSSH PRIVATE KEY-----\ntest\n".to_vec(),
        known_hosts: "203.0.113.7 ssh-ed25519 AAAA".into(),
    };
    let results = h
        .infra
        .set_deploy_credentials(pb::SetDeployCredentialsRequest {
            request_id: "d1".into(),
            project_id: "p1".into(),
            credentials: Some(creds),
            server_id: "s1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(
        results.iter().filter(|r| r.outcome == UPDATED).count(),
        1,
        "{results:?}"
    );
    let mut names = h.github.secret_names(ORG, "app1");
    names.sort();
    assert_eq!(
        names,
        vec![
            "DEPLOY_HOST",
            "DEPLOY_KNOWN_HOSTS",
            "DEPLOY_SSH_KEY",
            "DEPLOY_USER"
        ]
    );
    assert_eq!(
        h.github.secret(ORG, "app1", "DEPLOY_USER").unwrap(),
        b"deploy"
    );
    // Anything else is refused by the policy before the broker sees it.
    let err = h
        .infra
        .set_project_secrets(secrets("x", &[("TELEGRAM_TOKEN", b"v")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // api cannot remove deploy credentials.
    let err = h
        .api
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: "p1".into(),
            name: "DEPLOY_HOST".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A clone token: contents read on this one repository, refused for writes by GitHub.
    let minted = h
        .infra
        .mint_repository_token(pb::MintRepositoryTokenRequest {
            scope: pb::RepositoryTokenScope::Clone as i32,
            project_id: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minted.repositories.len(), 1);
    let token = minted.token;
    let http = |method: &str, path: &str, body: &str| {
        let (url, token, method, path, body) = (
            h.github.url(),
            token.clone(),
            method.to_owned(),
            path.to_owned(),
            body.to_owned(),
        );
        async move { orchestrator_e2e::raw_http(&url, &method, &path, &token, &body).await }
    };
    assert_eq!(
        http("GET", "/repos/acme/app1/actions/secrets/public-key", "").await,
        403
    );
    assert_eq!(
        http(
            "PUT",
            "/repos/acme/app1/contents/x.txt",
            r#"{"message":"m","content":"eA=="}"#
        )
        .await,
        403
    );
    // Scopes are per caller.
    let err = h
        .infra
        .mint_repository_token(pb::MintRepositoryTokenRequest {
            scope: pb::RepositoryTokenScope::RepositoryCreation as i32,
            project_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.get_error_details().error_info().unwrap().reason,
        "SCOPE_NOT_ALLOWED"
    );
    let created = h
        .scaffolder
        .mint_repository_token(pb::MintRepositoryTokenRequest {
            scope: pb::RepositoryTokenScope::RepositoryCreation as i32,
            project_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        created
            .permissions
            .iter()
            .any(|p| p.permission == "workflows" && p.access == pb::PermissionAccess::Write as i32)
    );
    // Tokens are audited, never logged.
    assert!(!h.broker.logs().contains(&created.token));
    drop(h.pki);
}

/// 20 % of calls failing in each way GitHub fails, one way at a time: every secret ends
/// pushed or with a precise error, and none is `present` without being at GitHub.
#[tokio::test]
async fn faults_end_with_every_secret_pushed_or_a_precise_error() {
    let kinds: [(&str, Faults); 5] = [
        (
            "server errors",
            Faults {
                server_error: 0.2,
                ..Faults::default()
            },
        ),
        (
            "429 with retry-after",
            Faults {
                rate_limited_429: 0.2,
                retry_after_secs: 0,
                ..Faults::default()
            },
        ),
        (
            "secondary 403",
            Faults {
                secondary_403: 0.2,
                retry_after_secs: 0,
                ..Faults::default()
            },
        ),
        (
            "dropped connections",
            Faults {
                dropped_connection: 0.2,
                ..Faults::default()
            },
        ),
        (
            "all kinds together",
            Faults {
                server_error: 0.1,
                rate_limited_429: 0.1,
                secondary_403: 0.1,
                dropped_connection: 0.1,
                retry_after_secs: 0,
                ..Faults::default()
            },
        ),
    ];
    for (round, (kind, faults)) in kinds.into_iter().enumerate() {
        let mut h = start(Config::default(), |l| l).await;
        h.github.set_faults(Faults {
            seed: 7 + round as u64,
            ..faults
        });
        let names: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
        let pairs: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
        let started = std::time::Instant::now();
        let response = h.api.set_project_secrets(secrets("f1", &pairs)).await;
        println!(
            "{kind}: {:?} in {:?}",
            response.as_ref().map(|_| "ok").map_err(|s| s.code()),
            started.elapsed()
        );
        assert!(
            h.github.stats().faults_injected.values().sum::<usize>() > 0,
            "{kind}: no fault injected"
        );
        h.github.set_faults(Faults::default());
        let results = match response {
            Ok(r) => r.into_inner().results,
            Err(status) => {
                // The batch can fail as a whole before any write (token, key, list): precisely.
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted),
                    "{kind}: {status:?}"
                );
                continue;
            }
        };
        let list = h
            .api
            .list_project_secrets(pb::ListProjectSecretsRequest {
                project_id: "p1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for r in &results {
            if r.outcome == CREATED || r.outcome == UPDATED {
                assert_eq!(
                    h.github.secret(ORG, "app1", &r.name).unwrap(),
                    r.name.as_bytes(),
                    "{kind}"
                );
            } else {
                assert!(
                    r.error
                        .as_ref()
                        .is_some_and(|e| e.code != 0 && !e.message.is_empty()),
                    "{kind}: {r:?}"
                );
            }
            let reference = list.secrets.iter().find(|s| s.name == r.name);
            if reference.is_some_and(|s| s.presence == common::SecretPresence::Present as i32) {
                assert!(
                    h.github.secret(ORG, "app1", &r.name).is_some(),
                    "{kind}: {} present but not at GitHub",
                    r.name
                );
            }
        }
    }
}

/// The broker is killed after GitHub accepted a PUT and before it recorded it; a new process
/// finds the secret `pending`, and reconcile recovers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_between_put_and_record_is_repaired_by_reconcile() {
    let mut h = start(Config::default(), |l| l).await;
    // Hold the broker right after the PUT: the follow-up read of the secret is slow.
    h.github.set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets/{name}",
        Faults {
            latency: Duration::from_secs(30),
            ..Faults::default()
        },
    );
    let mut api = h.api.clone();
    let push = tokio::spawn(async move {
        api.set_project_secrets(secrets("k1", &[("KILLED", b"v")]))
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while h.github.secret(ORG, "app1", "KILLED").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the PUT never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.broker.kill().await;
    assert!(push.await.unwrap().is_err());
    h.github.set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets/{name}",
        Faults::default(),
    );

    let restarted = Launch::new(Service::SecretBroker, &h.pki)
        .unwrap()
        .database(&h._db.url("secret-broker"))
        .github(&h.github, ORG)
        .spawn()
        .await
        .unwrap();
    let mut api = client(&restarted, &h.pki, "api").await;
    let list = api
        .list_project_secrets(pb::ListProjectSecretsRequest {
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Pending as i32,
        "{list:?}"
    );
    let report = api
        .reconcile_project_secrets(pb::ReconcileProjectSecretsRequest {
            project_id: "p1".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.findings.len(), 1);
    assert_eq!(
        report.findings[0].kind,
        pb::ReconcileFindingKind::Recovered as i32
    );
    let list = api
        .list_project_secrets(pb::ListProjectSecretsRequest {
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Present as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_paced_across_two_replicas() {
    let interval = Duration::from_millis(150);
    let config = Config {
        min_write_interval: interval,
        ..Config::default()
    };
    let h = start(config, |l| l.env("BROKER_MIN_WRITE_INTERVAL", "150ms")).await;
    // A second replica on the same database.
    let second = Launch::new(Service::SecretBroker, &h.pki)
        .unwrap()
        .database(&h._db.url("secret-broker"))
        .github(&h.github, ORG)
        .env("BROKER_MIN_WRITE_INTERVAL", "150ms")
        .spawn()
        .await
        .unwrap();
    let mut a = h.api.clone();
    let mut b = client(&second, &h.pki, "api").await;
    let pa: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("A{i}"), b"a".to_vec())).collect();
    let pb_: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("B{i}"), b"b".to_vec())).collect();
    let req = |id: &str, v: &[(String, Vec<u8>)]| {
        let pairs: Vec<(&str, &[u8])> = v.iter().map(|(n, x)| (n.as_str(), x.as_slice())).collect();
        secrets(id, &pairs)
    };
    let (ra, rb) = tokio::join!(
        a.set_project_secrets(req("pa", &pa)),
        b.set_project_secrets(req("pb", &pb_))
    );
    let all: Vec<_> = ra
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .chain(rb.unwrap().into_inner().results)
        .collect();
    assert!(all.iter().all(|r| r.outcome == CREATED), "{all:?}");
    let stats = h.github.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the emulator's secondary limit was hit"
    );
    let mut times: Vec<_> = stats.secret_writes.iter().map(|(_, t)| *t).collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= interval - Duration::from_millis(5),
            "writes {:?} apart",
            pair[1] - pair[0]
        );
    }
}
