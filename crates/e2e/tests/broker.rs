//! The secret broker over real mTLS, against the GitHub emulator: values sealed for the
//! repository (and decrypted there), references only in our storage, GitHub's rules checked
//! before any call, pacing, faults, foreign secrets untouched, scoped tokens.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{ORG, TestMesh, raw, violated_fields, wait_until};
use orchestrator_github_emulator::{Config, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const BROKER: Service = Service::SecretBroker;

/// A broker on PostgreSQL against the GitHub emulator (with `settings`), and project p1's
/// repository app1 registered.
async fn start(config: Config, settings: &[(&str, &str)]) -> TestMesh {
    let builder = TestMesh::builder()
        .postgres()
        .github(config)
        .service(BROKER);
    let mesh = settings
        .iter()
        .fold(builder, |b, (var, value)| b.env(BROKER, var, *value))
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    mesh
}

type Broker = SecretBrokerServiceClient<Channel>;

/// The project's secret references, as ListProjectSecrets answers.
async fn listed(api: &mut Broker, project_id: &str) -> pb::ListProjectSecretsResponse {
    api.list_project_secrets(pb::ListProjectSecretsRequest {
        project_id: project_id.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// What ReconcileProjectSecrets reports.
async fn reconciled(
    api: &mut Broker,
    project_id: &str,
    dry_run: bool,
) -> pb::ReconcileProjectSecretsResponse {
    api.reconcile_project_secrets(pb::ReconcileProjectSecretsRequest {
        project_id: project_id.into(),
        dry_run,
        location: None,
    })
    .await
    .unwrap()
    .into_inner()
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
        location: None,
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
    let mesh = start(Config::default(), &[]).await;
    let mut api = mesh.broker_as("api").await;
    mesh.register_repository("p2", "app2").await;
    api.set_project_secrets(secrets("same", &[("TOKEN", b"for-p1")]))
        .await
        .unwrap();
    let mut second = secrets("same", &[("TOKEN", b"for-p2")]);
    second.project_id = "p2".into();
    let results = api
        .set_project_secrets(second)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&results), vec![("TOKEN".into(), CREATED)]);
    assert_eq!(
        mesh.github().secret(ORG, "app2", "TOKEN").unwrap(),
        b"for-p2"
    );
    assert_eq!(
        mesh.github().secret(ORG, "app1", "TOKEN").unwrap(),
        b"for-p1"
    );
}

#[tokio::test]
async fn a_pushed_value_decrypts_at_github_and_only_a_reference_stays() {
    let canary = format!("canary-{}", orchestrator_e2e::random_key());
    let mesh = start(Config::default(), &[("RUST_LOG", "trace")]).await;
    let mut api = mesh.broker_as("api").await;
    let results = api
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
        mesh.github().secret(ORG, "app1", "TELEGRAM_TOKEN").unwrap(),
        canary.as_bytes()
    );
    let stats = mesh.github().stats();
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

    let list = listed(&mut api, "p1").await;
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
    let again = api
        .set_project_secrets(secrets("r2", &[("TELEGRAM_TOKEN", b"second")]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&again), vec![("TELEGRAM_TOKEN".into(), UPDATED)]);
    let puts_before = mesh.github().stats().secret_writes.len();
    let replay = api
        .set_project_secrets(secrets("r2", &[("TELEGRAM_TOKEN", b"second")]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(outcomes(&replay), vec![("TELEGRAM_TOKEN".into(), UPDATED)]);
    assert_eq!(mesh.github().stats().secret_writes.len(), puts_before);

    // The canary is nowhere in the broker's logs (trace level) or storage.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!mesh.logs(BROKER).contains(&canary));
    mesh.assert_absent_from_tables(
        BROKER,
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
    let mesh = start(Config::default(), &[]).await;
    let mut api = mesh.broker_as("api").await;
    let before = mesh.github().stats().requests.values().sum::<usize>();
    let big = vec![b'x'; 48 * 1024 + 1];
    let err = api
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
    let fields = violated_fields(&err);
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
        mesh.github().stats().requests.values().sum::<usize>(),
        before,
        "GitHub was called"
    );
    assert!(mesh.github().secret_names(ORG, "app1").is_empty());
    // Unknown project: NOT_FOUND, nothing called.
    let mut req = secrets("x", &[("A", b"v")]);
    req.project_id = "nope".into();
    assert_eq!(
        api.set_project_secrets(req).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// The broker's message limit fits its largest valid request (100 secrets of 48 KiB) and
/// nothing much larger: a bigger message is refused before it is buffered or decoded.
#[tokio::test]
async fn the_largest_valid_request_fits_and_a_larger_message_is_refused_unread() {
    let mesh = start(Config::default(), &[]).await;
    let mut api = mesh.broker_as("api").await;
    let value = vec![b'x'; 48 * 1024];
    let names: Vec<String> = (0..110).map(|i| format!("S{i}")).collect();
    let pairs = |n: usize| -> Vec<(&str, &[u8])> {
        names[..n]
            .iter()
            .map(|n| (n.as_str(), &value[..]))
            .collect()
    };
    // 100 full values and one bad name: decoded and validated (INVALID_ARGUMENT, not a size
    // refusal), so the limit takes the largest request there is.
    let mut largest = pairs(100);
    largest[99].0 = "bad name";
    let err = api
        .set_project_secrets(secrets("big", &largest))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(violated_fields(&err), ["secrets[99].name"]);
    // 110 values (5.4 MB): refused on the length prefix, before the broker reads it.
    let err = api
        .set_project_secrets(secrets("bigger", &pairs(110)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("too large"), "{}", err.message());
    assert!(mesh.github().secret_names(ORG, "app1").is_empty());
}

#[tokio::test]
async fn deletes_never_touch_foreign_secrets_and_reconcile_reports_drift() {
    let mesh = start(Config::default(), &[]).await;
    let mut api = mesh.broker_as("api").await;
    mesh.github()
        .put_secret_directly(ORG, "app1", "FOREIGN", b"someone else's");
    api.set_project_secrets(secrets(
        "r1",
        &[("OURS", b"v"), ("KEPT", b"v"), ("GONE", b"v")],
    ))
    .await
    .unwrap();
    let err = api
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: "p1".into(),
            name: "FOREIGN".into(),
            location: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(mesh.github().secret(ORG, "app1", "FOREIGN").is_some());
    let deleted = api
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: "p1".into(),
            name: "ours".into(),
            location: None,
        })
        .await
        .unwrap();
    assert!(deleted.into_inner().deleted_at_github);
    assert!(mesh.github().secret(ORG, "app1", "OURS").is_none());

    // Someone deletes GONE and rewrites KEPT behind our back.
    let token_free_edit = |name: &str| {
        mesh.github()
            .put_secret_directly(ORG, "app1", name, b"changed")
    };
    tokio::time::sleep(Duration::from_millis(1100)).await; // updated_at has second resolution
    token_free_edit("KEPT");
    assert!(mesh.github().delete_secret_directly(ORG, "app1", "GONE"));
    let reconcile = reconciled(&mut api, "p1", true).await;
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
    assert!(
        kinds.contains(&("GONE".into(), pb::ReconcileFindingKind::Missing as i32)),
        "a secret deleted at GitHub is not reported missing: {kinds:?}"
    );
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(reconcile.in_sync_count, 0, "{kinds:?}");
    assert!(
        mesh.github().secret(ORG, "app1", "FOREIGN").is_some(),
        "reconcile touched a foreign secret"
    );
}

#[tokio::test]
async fn a_crash_between_put_and_record_is_repaired_by_reconcile() {
    let mesh = start(Config::default(), &[]).await;
    let mut api = mesh.broker_as("api").await;
    api.set_project_secrets(secrets("r1", &[("CRASHED", b"v")]))
        .await
        .unwrap();
    // The state a crash after GitHub's 201 and before our record leaves behind.
    mesh.as_dba(BROKER, "UPDATE secret_broker.secret_refs SET state = 'pending', github_updated_at = NULL WHERE name = 'CRASHED'")
        .await;
    let list = listed(&mut api, "p1").await;
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Pending as i32
    );
    let reconcile = reconciled(&mut api, "p1", false).await;
    assert_eq!(reconcile.findings.len(), 1);
    assert_eq!(
        reconcile.findings[0].kind,
        pb::ReconcileFindingKind::Recovered as i32
    );
    assert!(reconcile.findings[0].repaired);
    let list = listed(&mut api, "p1").await;
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Present as i32
    );
}

#[tokio::test]
async fn infra_writes_deploy_credentials_only_and_gets_clone_tokens_that_cannot_write() {
    let mesh = start(Config::default(), &[]).await;
    let (mut api, mut infra, mut scaffolder) = (
        mesh.broker_as("api").await,
        mesh.broker_as("infra").await,
        mesh.broker_as("scaffolder").await,
    );
    // The key first, alone (infra hands it over as soon as it exists), then the rest.
    let key_only = pb::DeployCredentials {
        ssh_private_key: b"-----BEGIN OPENSSH PRIVATE KEY-----\nearly\n".to_vec(),
        ..Default::default()
    };
    let early = infra
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
    let none = infra
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
    let results = infra
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
    let mut names = mesh.github().secret_names(ORG, "app1");
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
        mesh.github().secret(ORG, "app1", "DEPLOY_USER").unwrap(),
        b"deploy"
    );
    // Anything else is refused by the policy before the broker sees it.
    let err = infra
        .set_project_secrets(secrets("x", &[("TELEGRAM_TOKEN", b"v")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // api cannot remove deploy credentials.
    let err = api
        .delete_project_secret(pb::DeleteProjectSecretRequest {
            project_id: "p1".into(),
            name: "DEPLOY_HOST".into(),
            location: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A clone token: contents read on this one repository, refused for writes by GitHub.
    let minted = infra
        .mint_repository_token(pb::MintRepositoryTokenRequest {
            scope: pb::RepositoryTokenScope::Clone as i32,
            project_id: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(minted.repositories.len(), 1);
    let token = minted.token;
    let url = mesh.github().url();
    let http = |method: &'static str, path: &'static str, body: &'static str| {
        raw::status_with_token(&url, method, path, &token, body)
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
    let err = infra
        .mint_repository_token(pb::MintRepositoryTokenRequest {
            scope: pb::RepositoryTokenScope::RepositoryCreation as i32,
            project_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.get_error_details().error_info().unwrap().reason,
        "SCOPE_NOT_ALLOWED"
    );
    let created = scaffolder
        .mint_repository_token(pb::MintRepositoryTokenRequest {
            scope: pb::RepositoryTokenScope::RepositoryCreation as i32,
            project_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Creating a repository needs administration, and the token carries nothing else: it
    // writes no repository's contents or workflows.
    let granted: Vec<(&str, i32)> = created
        .permissions
        .iter()
        .map(|p| (p.permission.as_str(), p.access))
        .collect();
    assert_eq!(
        granted,
        [("administration", pb::PermissionAccess::Write as i32)]
    );
    // Tokens are audited, never logged.
    assert!(!mesh.logs(BROKER).contains(&created.token));
}

/// One fault round: a broker on `config` (with `settings`), GitHub failing as `faults` says
/// while ten secrets are pushed in one request. `Err` says what went wrong: a secret not pushed
/// (with its error), a value not exact at GitHub, a reference not `present`, or a retry that
/// came before GitHub's `retry-after` or `x-ratelimit-reset` allowed (as the emulator measured
/// the arrivals).
async fn fault_round(
    kind: &str,
    config: Config,
    faults: Faults,
    settings: &[(&str, &str)],
) -> Result<String, String> {
    let mesh = start(config, settings).await;
    let mut api = mesh.broker_as("api").await;
    mesh.github().reset_stats();
    mesh.github().set_faults(faults);
    let names: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
    let pairs: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
    let started = std::time::Instant::now();
    let response = api.set_project_secrets(secrets("f1", &pairs)).await;
    let took = started.elapsed();
    let stats = mesh.github().stats();
    mesh.github().set_faults(Faults::default());
    let injected = stats.faults_injected.values().sum::<usize>() + stats.rate_limited;
    assert!(injected > 0, "{kind}: no fault injected");
    let results = response
        .map_err(|status| format!("{kind}: the request failed: {status:?}"))?
        .into_inner()
        .results;
    let list = listed(&mut api, "p1").await;
    let mut problems = Vec::new();
    if results.len() != names.len() {
        problems.push(format!(
            "{} results for {} secrets",
            results.len(),
            names.len()
        ));
    }
    for r in &results {
        if r.outcome != CREATED && r.outcome != UPDATED {
            problems.push(format!("{} not pushed: {:?}", r.name, r.error));
        }
        if mesh.github().secret(ORG, "app1", &r.name).as_deref() != Some(r.name.as_bytes()) {
            problems.push(format!("{} not exact at GitHub", r.name));
        }
        let presence = list
            .secrets
            .iter()
            .find(|s| s.name == r.name)
            .map(|s| s.presence);
        if presence != Some(common::SecretPresence::Present as i32) {
            problems.push(format!("{} is {presence:?}, not present", r.name));
        }
    }
    let waits = stats.waits();
    if !waits.early.is_empty() {
        problems.push(format!("{} retries came early", waits.early.len()));
        problems.extend(waits.early.into_iter().take(3));
    }
    if problems.is_empty() {
        Ok(format!(
            "{kind}: all pushed in {took:?}, {} waits honoured",
            waits.followed
        ))
    } else {
        Err(format!("{kind}: {problems:#?}"))
    }
}

/// 20 % of calls failing in each way GitHub fails, one way at a time, then all together, and
/// an exhausted primary limit: every secret ends pushed, exact at GitHub and `present`, and
/// every retry comes no earlier than GitHub's `retry-after` (sent non-zero) or the primary
/// limit's reset (a two-second window here) allowed. A client that does not retry fails this:
/// the last round runs the same faults with retries off (`BROKER_GITHUB_DEADLINE=0s`) and must
/// end with secrets not pushed.
#[tokio::test]
async fn faults_end_with_every_secret_pushed_and_retries_wait_as_asked() {
    // A secondary limit without `retry-after` is waited for BROKER_SECONDARY_WAIT (GitHub: a
    // minute, here a second), doubling each time it repeats.
    let settings = [("BROKER_SECONDARY_WAIT", "1s")];
    let retry_after = |f: Faults| Faults {
        retry_after_secs: 1,
        ..f
    };
    let rounds: [(&str, Config, Faults); 7] = [
        (
            "server errors",
            Config::default(),
            Faults {
                server_error: 0.2,
                ..Faults::default()
            },
        ),
        (
            "429 with retry-after",
            Config::default(),
            retry_after(Faults {
                rate_limited_429: 0.2,
                ..Faults::default()
            }),
        ),
        (
            "secondary 403 with retry-after",
            Config::default(),
            retry_after(Faults {
                secondary_403: 0.2,
                ..Faults::default()
            }),
        ),
        (
            "secondary 403 without retry-after",
            Config::default(),
            Faults {
                secondary_403: 0.2,
                retry_after_secs: 0,
                ..Faults::default()
            },
        ),
        (
            "dropped connections",
            Config::default(),
            Faults {
                dropped_connection: 0.2,
                ..Faults::default()
            },
        ),
        (
            "all kinds together",
            Config::default(),
            retry_after(Faults {
                server_error: 0.1,
                rate_limited_429: 0.1,
                secondary_403: 0.1,
                dropped_connection: 0.1,
                ..Faults::default()
            }),
        ),
        (
            "primary limit, 4 requests per 2 s",
            Config {
                primary_limit_per_hour: 4,
                primary_window: Duration::from_secs(2),
                ..Config::default()
            },
            Faults::default(),
        ),
    ];
    for (round, (kind, config, faults)) in rounds.into_iter().enumerate() {
        let faults = Faults {
            seed: 7 + round as u64,
            ..faults
        };
        match fault_round(kind, config, faults, &settings).await {
            Ok(summary) => println!("{summary}"),
            Err(problems) => panic!("{problems}"),
        }
    }

    // The control: the same faults for a broker that never retries fail the round.
    let no_retries = [
        ("BROKER_SECONDARY_WAIT", "1s"),
        ("BROKER_GITHUB_DEADLINE", "0s"),
    ];
    let control = fault_round(
        "all kinds together, no retries",
        Config::default(),
        retry_after(Faults {
            seed: 7 + 5,
            server_error: 0.1,
            rate_limited_429: 0.1,
            secondary_403: 0.1,
            dropped_connection: 0.1,
            ..Faults::default()
        }),
        &no_retries,
    )
    .await;
    assert!(
        control.is_err(),
        "a client without retries passed the fault round"
    );
}

/// The broker is killed after GitHub accepted a PUT and before it recorded it; a new process
/// finds the secret `pending`, and reconcile recovers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_between_put_and_record_is_repaired_by_reconcile() {
    let mut mesh = start(Config::default(), &[]).await;
    let api = mesh.broker_as("api").await;
    // Hold the broker right after the PUT: the follow-up read of the secret is slow.
    mesh.github().set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets/{name}",
        Faults {
            latency: Duration::from_secs(30),
            ..Faults::default()
        },
    );
    let mut api = api.clone();
    let push = tokio::spawn(async move {
        api.set_project_secrets(secrets("k1", &[("KILLED", b"v")]))
            .await
    });
    wait_until("the PUT never arrived", Duration::from_secs(20), || {
        mesh.github().secret(ORG, "app1", "KILLED").is_some()
    })
    .await;
    mesh.kill(BROKER).await;
    assert!(push.await.unwrap().is_err());
    mesh.github().set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets/{name}",
        Faults::default(),
    );

    mesh.restart(BROKER).await;
    let mut api = mesh.broker_as("api").await;
    let list = listed(&mut api, "p1").await;
    assert_eq!(
        list.secrets[0].presence,
        common::SecretPresence::Pending as i32,
        "{list:?}"
    );
    let report = reconciled(&mut api, "p1", false).await;
    assert_eq!(report.findings.len(), 1);
    assert_eq!(
        report.findings[0].kind,
        pb::ReconcileFindingKind::Recovered as i32
    );
    let list = listed(&mut api, "p1").await;
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
    let mesh = start(config, &[("BROKER_MIN_WRITE_INTERVAL", "150ms")]).await;
    // A second replica on the same database.
    let second = mesh.launch(BROKER).spawn().await.unwrap();
    let mut a = mesh.broker_as("api").await;
    let mut b = Broker::new(mesh.channel_to(&second, "api").await);
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
    let stats = mesh.github().stats();
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

/// The broker's `secrets: write` tokens minted so far.
fn secrets_token_mints(mesh: &TestMesh) -> usize {
    mesh.github()
        .stats()
        .token_mints
        .iter()
        .filter(|m| m.permissions.get("secrets").map(String::as_str) == Some("write"))
        .count()
}

/// The broker caches its installation token for the token's lifetime: a second push within it
/// mints none (fails against a broker that mints per push). A token GitHub grants for five
/// minutes is already inside the five minutes before expiry in which the broker replaces it,
/// so the second push mints a fresh one (fails against a cache that keeps tokens until their
/// very expiry).
#[tokio::test]
async fn a_second_push_within_the_tokens_lifetime_mints_no_token() {
    for (lifetime, new_mints) in [(3600, 0), (300, 1)] {
        let mesh = start(
            Config {
                token_lifetime: Duration::from_secs(lifetime),
                ..Config::default()
            },
            &[],
        )
        .await;
        let mut api = mesh.broker_as("api").await;
        api.set_project_secrets(secrets("t1", &[("FIRST", b"1")]))
            .await
            .unwrap();
        let before = secrets_token_mints(&mesh);
        assert!(before >= 1, "{lifetime} s: no secrets token minted");
        api.set_project_secrets(secrets("t2", &[("SECOND", b"2")]))
            .await
            .unwrap();
        assert_eq!(
            secrets_token_mints(&mesh) - before,
            new_mints,
            "tokens living {lifetime} s"
        );
        assert_eq!(mesh.github().secret(ORG, "app1", "SECOND").unwrap(), b"2");
    }
}

/// GitHub holds at most 100 secrets per repository, counting the ones already there (someone
/// else's included), and a request carries at most 100: a push that would make the 101st is
/// refused whole with FAILED_PRECONDITION `TOO_MANY_SECRETS` before any PUT (not 99 written and
/// the rest failed at GitHub), one that fills the repository to exactly 100 goes through, an
/// update of a secret already there (in any letter case) takes no room, and 101 secrets in one
/// request are INVALID_ARGUMENT before any GitHub call.
#[tokio::test]
async fn the_hundred_secret_limit_counts_what_github_holds_and_bounds_a_request() {
    let mesh = start(Config::default(), &[("BROKER_MIN_WRITE_INTERVAL", "0s")]).await;
    let mut api = mesh.broker_as("api").await;
    const PUT: &str = "PUT /repos/{owner}/{repo}/actions/secrets/{secret_name}";
    let puts = |mesh: &TestMesh| {
        mesh.github()
            .stats()
            .requests
            .get(PUT)
            .copied()
            .unwrap_or(0)
    };

    // 101 in one request: refused on the count, GitHub never called.
    let names: Vec<String> = (0..101).map(|i| format!("MANY_{i}")).collect();
    let pairs: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"v" as &[u8])).collect();
    let before = mesh.github().stats().requests.values().sum::<usize>();
    let err = api
        .set_project_secrets(secrets("many", &pairs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_fields(&err), ["secrets"]);
    assert_eq!(
        mesh.github().stats().requests.values().sum::<usize>(),
        before
    );

    // 95 already there: 90 someone else's, 5 ours.
    for i in 0..90 {
        mesh.github()
            .put_secret_directly(ORG, "app1", &format!("FOREIGN_{i}"), b"theirs");
    }
    let ours: Vec<String> = (0..5).map(|i| format!("OURS_{i}")).collect();
    let pairs: Vec<(&str, &[u8])> = ours.iter().map(|n| (n.as_str(), b"v" as &[u8])).collect();
    api.set_project_secrets(secrets("ours", &pairs))
        .await
        .unwrap();
    assert_eq!(mesh.github().secret_names(ORG, "app1").len(), 95);

    // Six new ones would be 101: refused whole, nothing written.
    let six: Vec<String> = (0..6).map(|i| format!("NEW_{i}")).collect();
    let pairs: Vec<(&str, &[u8])> = six.iter().map(|n| (n.as_str(), b"v" as &[u8])).collect();
    let puts_before = puts(&mesh);
    let err = api
        .set_project_secrets(secrets("six", &pairs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.get_error_details().error_info().unwrap().reason,
        "TOO_MANY_SECRETS"
    );
    assert_eq!(puts(&mesh), puts_before, "a PUT was sent");
    assert_eq!(mesh.github().secret_names(ORG, "app1").len(), 95);

    // Updates of secrets already there (one named in another letter case) and four new ones:
    // 99, fine; then one more new one: exactly 100, fine.
    let mixed: [(&str, &[u8]); 6] = [
        ("ours_0", b"v2"),
        ("OURS_1", b"v2"),
        ("NEW_0", b"v"),
        ("NEW_1", b"v"),
        ("NEW_2", b"v"),
        ("NEW_3", b"v"),
    ];
    let results = api
        .set_project_secrets(secrets("mixed", &mixed))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        results
            .iter()
            .all(|r| r.outcome == CREATED || r.outcome == UPDATED),
        "{results:?}"
    );
    assert_eq!(mesh.github().secret_names(ORG, "app1").len(), 99);
    api.set_project_secrets(secrets("last", &[("NEW_4", b"v")]))
        .await
        .unwrap();
    assert_eq!(mesh.github().secret_names(ORG, "app1").len(), 100);
    let err = api
        .set_project_secrets(secrets("over", &[("NEW_5", b"v")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(mesh.github().secret_names(ORG, "app1").len(), 100);
}
