//! `orchestrator-bench secrets`: 100 secrets pushed to one repository through the broker,
//! against the GitHub emulator with a minimum write interval and added latency; compared with
//! an unpaced parallel push (what `gh secret set -f` does) against the same emulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_e2e::{Launch, Pki, github_emulator};
use orchestrator_github::{AppAuth, GitHub, RepoRef, RetryPolicy, SecretName};
use orchestrator_github_emulator::{Config, Faults};
use orchestrator_mesh::Service;
use orchestrator_proto::common::v1 as common;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::secretbroker::v1::secret_broker_service_client::SecretBrokerServiceClient;
use orchestrator_store::testing::TestDatabase;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Secrets in the batch.
    #[arg(long, default_value_t = 100)]
    secrets: usize,
    /// Minimum interval between writes (the emulator enforces it; the broker is set to it).
    #[arg(long, default_value = "200ms")]
    interval: String,
    /// Latency the emulator adds to every request.
    #[arg(long, default_value = "50ms")]
    latency: String,
}

#[allow(clippy::print_stdout)]
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let interval = orchestrator_mesh::config::parse_duration(&args.interval)
        .ok_or_else(|| anyhow::anyhow!("--interval"))?;
    let latency = orchestrator_mesh::config::parse_duration(&args.latency)
        .ok_or_else(|| anyhow::anyhow!("--latency"))?;
    let config = Config {
        min_write_interval: interval,
        ..Config::default()
    };
    let github = github_emulator("acme", config).await?;
    github.create_repository("acme", "bench");
    github.create_repository("acme", "unpaced");
    github.set_faults(Faults {
        latency,
        ..Faults::default()
    });

    let pki = Pki::new()?;
    let db = TestDatabase::postgres(&["secret-broker"]).await;
    let broker = Launch::new(Service::SecretBroker, &pki)?
        .test_database(&db)
        .github(&github, "acme")
        .env("BROKER_MIN_WRITE_INTERVAL", args.interval.clone())
        .spawn()
        .await?;
    let mut scaffolder =
        SecretBrokerServiceClient::new(broker.channel(&pki.client("scaffolder")?).await?);
    let mut api = SecretBrokerServiceClient::new(broker.channel(&pki.client("api")?).await?);
    scaffolder
        .register_repository(pb::RegisterRepositoryRequest {
            request_id: "bench".into(),
            project_id: "bench".into(),
            repository: Some(common::RepositoryRef {
                owner: "acme".into(),
                name: "bench".into(),
                id: 0,
            }),
        })
        .await?;
    github.reset_stats();
    let secrets: Vec<common::ProjectSecretValue> = (0..args.secrets)
        .map(|i| common::ProjectSecretValue {
            name: format!("SECRET_{i}"),
            value: format!("value-{i}").into_bytes(),
        })
        .collect();
    let started = Instant::now();
    let results = api
        .set_project_secrets(pb::SetProjectSecretsRequest {
            request_id: "push".into(),
            project_id: "bench".into(),
            secrets,
            location: None,
        })
        .await?
        .into_inner()
        .results;
    let elapsed = started.elapsed();
    let stats = github.stats();
    let ok = results
        .iter()
        .filter(|r| r.outcome == common::SecretWriteOutcome::Created as i32)
        .count();
    // The broker spaces writes from the end of one PUT to the start of the next (GitHub counts
    // arrivals, and a write arrives before it ends): each write costs the interval plus its own
    // round trip, at the least.
    let floor = (interval + latency) * args.secrets as u32;
    println!(
        "secrets: {} secrets to one repository, minimum write interval {:?}, added latency {:?}",
        args.secrets, interval, latency
    );
    println!(
        "  broker (paced):     {ok}/{} created in {:.2} s = {:.3}x the pacing floor ({:.1} s); rate-limit rejections {}; token mints {}; public-key fetches {}",
        args.secrets,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / floor.as_secs_f64(),
        floor.as_secs_f64(),
        stats.rate_limited,
        stats.token_mints.len(),
        stats.public_key_fetches
    );

    // Unpaced and parallel, one token and one key, no retries: like `gh secret set -f`.
    github.reset_stats();
    let app = AppAuth::from_pem(
        orchestrator_e2e::APP_ID,
        &secrecy::SecretString::from(orchestrator_e2e::app_key().0.clone()),
    )?;
    let no_retry = RetryPolicy {
        deadline: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let client = Arc::new(GitHub::new(&github.url(), app, no_retry)?);
    let repo = RepoRef::new("acme", "unpaced")?;
    let installation = client.installation_for_repo(&repo).await?;
    let (token, _) = client
        .token(installation, &["unpaced"], &[("secrets", "write")])
        .await?;
    let key = client.public_key(&token.token, &repo).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.secrets {
        let (client, token, key, repo) = (client.clone(), token.clone(), key.clone(), repo.clone());
        tasks.push(tokio::spawn(async move {
            let name = SecretName::new(&format!("SECRET_{i}")).expect("valid name");
            let sealed = orchestrator_github::seal(&key, format!("value-{i}").as_bytes());
            client
                .put_secret(&token.token, &repo, &name, &sealed, &key.key_id)
                .await
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "  unpaced, parallel:  {ok}/{} created in {:.2} s; {failed} refused (rate-limit rejections at the emulator: {})",
        args.secrets,
        started.elapsed().as_secs_f64(),
        github.stats().rate_limited
    );
    drop(broker);
    drop(db);
    Ok(())
}
