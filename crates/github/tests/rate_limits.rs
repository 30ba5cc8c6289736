//! The client's waits against the GitHub emulator, for every shape GitHub's limits take
//! ("Rate limits for the REST API"): 403 or 429; with `retry-after`, or the primary limit's
//! `x-ratelimit-remaining: 0` and reset time, or neither (a secondary limit: at least a minute).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::{Duration, Instant};

use orchestrator_github::{AppAuth, GitHub, GitHubError, RepoRef, RetryPolicy};
use orchestrator_github_emulator::testing::{APP_ID, ORG, app_key, trusting_test_app};
use orchestrator_github_emulator::{Config, Emulator, Faults};
use secrecy::SecretString;

const LIST: &str = "GET /repos/{owner}/{repo}/actions/secrets";

/// An emulator with `config`, the App installed on ORG with repository `app`, and a client
/// whose secondary wait is one second (GitHub's minute, scaled down) and whose backoff is tiny,
/// so a wait of one from the other is told apart.
async fn setup(config: Config) -> (Emulator, GitHub, SecretString) {
    let emu = Emulator::start(trusting_test_app(config)).await.unwrap();
    let installation = emu.install(ORG);
    emu.create_repository(ORG, "app");
    let app = AppAuth::from_pem(APP_ID, &SecretString::from(app_key().0.clone())).unwrap();
    let policy = RetryPolicy {
        deadline: Duration::from_secs(10),
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        secondary_wait: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let github = GitHub::new(&emu.url(), app, policy).unwrap();
    let (token, _) = github
        .token(installation, &["app"], &[("secrets", "write")])
        .await
        .unwrap();
    (emu, github, token.token.clone())
}

fn repo() -> RepoRef {
    RepoRef::new(ORG, "app").unwrap()
}

/// An exhausted primary limit, as 403 or as 429, is waited for until its reset: beyond the
/// deadline, so the call fails at once naming the wait (before, a 429 was retried every half
/// second until the deadline, which hammers GitHub and names a wait that is wrong).
#[tokio::test]
async fn a_primary_limit_waits_for_its_reset_whether_403_or_429() {
    for status in [403, 429] {
        let (_emu, github, token) = setup(Config {
            primary_limit_per_hour: 3,
            primary_status: status,
            ..Config::default()
        })
        .await;
        // The installation's three requests an hour.
        for _ in 0..3 {
            github.list_secrets(&token, &repo()).await.unwrap();
        }
        let started = Instant::now();
        let err = github.list_secrets(&token, &repo()).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{status}: waited"
        );
        match err {
            GitHubError::RateLimited {
                retry_after: Some(wait),
            } => assert!(wait > Duration::from_secs(600), "{status}: {wait:?}"),
            other => panic!("{status}: {other:?}"),
        }
    }
}

/// A secondary limit without `retry-after`, as 403 or as 429, is waited for at least the
/// secondary wait (GitHub: a minute), not a backoff step.
#[tokio::test]
async fn a_secondary_limit_without_retry_after_waits_at_least_the_secondary_wait() {
    for (faults, name) in [
        (
            Faults {
                rate_limited_429: 1.0,
                retry_after_secs: 0,
                ..Faults::default()
            },
            "429",
        ),
        (
            Faults {
                secondary_403: 1.0,
                retry_after_secs: 0,
                ..Faults::default()
            },
            "403",
        ),
    ] {
        let (emu, github, token) = setup(Config::default()).await;
        emu.set_faults_for(LIST, faults);
        // The limit lifts after 300 ms; a client that retried on its backoff would be through
        // by then.
        let lifted = emu.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            lifted.set_faults_for(LIST, Faults::default());
        });
        let started = Instant::now();
        github.list_secrets(&token, &repo()).await.unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1), "{name}: {waited:?}");
        assert_eq!(emu.stats().requests[LIST], 2, "{name}: one wait, one retry");
    }
}

/// `retry-after` is honoured as sent, for 429 and for 403.
#[tokio::test]
async fn retry_after_is_honoured_for_403_and_429() {
    for faults in [
        Faults {
            rate_limited_429: 1.0,
            retry_after_secs: 2,
            ..Faults::default()
        },
        Faults {
            secondary_403: 1.0,
            retry_after_secs: 2,
            ..Faults::default()
        },
    ] {
        let (emu, github, token) = setup(Config::default()).await;
        emu.set_faults_for(LIST, faults);
        let lifted = emu.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            lifted.set_faults_for(LIST, Faults::default());
        });
        let started = Instant::now();
        github.list_secrets(&token, &repo()).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(2));
    }
}

/// The client's next attempt comes no earlier than GitHub asked, as GitHub would measure it
/// (the emulator's own record of arrivals, `Stats::waits`): `retry-after` seconds after the
/// answer, or at the primary limit's `x-ratelimit-reset`. Both sent non-zero.
#[tokio::test]
async fn the_next_attempt_comes_no_earlier_than_retry_after_or_the_reset() {
    // retry-after: 1 s on 429 and on 403; the limit lifts at once, so a client that did not
    // wait would retry (and succeed) early.
    for faults in [
        Faults {
            rate_limited_429: 1.0,
            retry_after_secs: 1,
            ..Faults::default()
        },
        Faults {
            secondary_403: 1.0,
            retry_after_secs: 1,
            ..Faults::default()
        },
    ] {
        let (emu, github, token) = setup(Config::default()).await;
        emu.set_faults_for(LIST, faults);
        let lifted = emu.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            lifted.set_faults_for(LIST, Faults::default());
        });
        github.list_secrets(&token, &repo()).await.unwrap();
        let waits = emu.stats().waits();
        assert!(waits.followed >= 1, "{waits:?}");
        assert!(waits.early.is_empty(), "{waits:?}");
    }

    // The primary limit, two requests in a two-second window: the third waits for the reset.
    let (emu, github, token) = setup(Config {
        primary_limit_per_hour: 2,
        primary_window: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    for _ in 0..3 {
        github.list_secrets(&token, &repo()).await.unwrap();
    }
    let stats = emu.stats();
    assert!(
        stats.attempts.iter().any(|a| a.wait_until_reset.is_some()),
        "the limit was never hit"
    );
    let waits = stats.waits();
    assert!(waits.followed >= 1, "{waits:?}");
    assert!(waits.early.is_empty(), "{waits:?}");
}
