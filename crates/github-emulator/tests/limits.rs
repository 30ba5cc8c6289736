//! Rate-limit headers, primary and secondary limits, and seeded fault injection.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Gh, ORG, assert_rate_headers, config, header, message};
use orchestrator_github_emulator::{Config, Faults};
use reqwest::Method;
use serde_json::json;

const PUBLIC_KEY: &str = "/repos/acme/app/actions/secrets/public-key";

async fn setup(config: Config) -> (Gh, u64, String) {
    let gh = Gh::with(config).await;
    let inst = gh.emu.install(ORG);
    gh.emu.create_repository(ORG, "app");
    let token = gh
        .mint(
            inst,
            json!({"permissions": {"secrets": "write", "contents": "write"}}),
        )
        .await;
    (gh, inst, token)
}

#[tokio::test]
async fn every_response_carries_rate_limit_headers() {
    let (gh, _, token) = setup(config()).await;
    let responses = vec![
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await, // 200
        gh.tok(Method::GET, "/repos/acme/none", &token, None).await, // 404
        gh.tok(Method::GET, "/no/such/route", &token, None).await, // unmatched
        gh.tok(Method::GET, "/repos/acme/app", "ghs_wrong", None)
            .await, // 401
        gh.call(Method::GET, "/repos/acme/app", None, None)
            .await
            .unwrap(), // anonymous
        gh.tok(
            Method::PUT,
            "/repos/acme/app/actions/secrets/1X",
            &token,
            Some(json!({})),
        )
        .await, // 422
    ];
    for resp in &responses {
        assert_rate_headers(resp);
    }
    assert_eq!(responses[2].status(), 404);
    assert_eq!(header(&responses[0], "x-ratelimit-limit"), Some("5000"));
    assert_eq!(header(&responses[4], "x-ratelimit-limit"), Some("60"));
    let used: u64 = header(&responses[0], "x-ratelimit-used")
        .unwrap()
        .parse()
        .unwrap();
    let remaining: u64 = header(&responses[0], "x-ratelimit-remaining")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(used + remaining, 5000);
    let reset: i64 = header(&responses[0], "x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(reset > now && reset <= now + 3600);
}

#[tokio::test]
async fn primary_limit_per_installation() {
    primary_limit_answered_with(403).await;
    primary_limit_answered_with(429).await;
}

/// GitHub answers an exhausted primary limit with 403 or 429, `x-ratelimit-remaining: 0`, the
/// reset time, and no `retry-after`.
async fn primary_limit_answered_with(status: u16) {
    let (gh, inst, token) = setup(Config {
        primary_limit_per_hour: 3,
        primary_status: status,
        ..config()
    })
    .await;
    // A second token of the same installation shares the window.
    let other = gh.mint(inst, json!({})).await;
    let mut remaining = Vec::new();
    for t in [&token, &other, &token] {
        let resp = gh.tok(Method::GET, PUBLIC_KEY, t, None).await;
        assert_eq!(resp.status(), 200);
        remaining.push(header(&resp, "x-ratelimit-remaining").unwrap().to_owned());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let resp = gh.tok(Method::GET, PUBLIC_KEY, &other, None).await;
    assert_eq!(resp.status(), status);
    assert_eq!(header(&resp, "x-ratelimit-remaining"), Some("0"));
    assert!(header(&resp, "x-ratelimit-reset").is_some());
    assert_eq!(header(&resp, "retry-after"), None);
    assert_eq!(
        message(resp).await,
        format!("API rate limit exceeded for installation ID {inst}.")
    );
    assert_eq!(gh.emu.stats().rate_limited, 1);
    // The App's JWT has its own window.
    gh.mint(inst, json!({})).await;
}

#[tokio::test]
async fn min_write_interval_is_a_secondary_limit() {
    for status in [403u16, 429] {
        let (gh, _, token) = setup(Config {
            min_write_interval: Duration::from_millis(400),
            secondary_status: status,
            ..config()
        })
        .await;
        let (key_id, sealed) = gh.seal(&token, ORG, "app", b"v").await;
        let body = json!({"encrypted_value": sealed, "key_id": key_id});
        let path = "/repos/acme/app/actions/secrets/A";
        assert_eq!(
            gh.tok(Method::PUT, path, &token, Some(body.clone()))
                .await
                .status(),
            201
        );
        let resp = gh.tok(Method::PUT, path, &token, Some(body.clone())).await;
        assert_eq!(resp.status(), status);
        assert_rate_headers(&resp);
        assert_eq!(header(&resp, "retry-after"), Some("1"));
        assert!(
            message(resp)
                .await
                .starts_with("You have exceeded a secondary rate limit")
        );
        // Reads are not writes.
        assert_eq!(
            gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
            200
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            gh.tok(Method::PUT, path, &token, Some(body)).await.status(),
            204
        );
        let stats = gh.emu.stats();
        assert_eq!(stats.rate_limited, 1);
        assert_eq!(stats.secret_writes.len(), 2);
        let gap = stats.secret_writes[1].1 - stats.secret_writes[0].1;
        assert!(gap >= Duration::from_millis(400), "{gap:?}");
    }
}

#[tokio::test]
async fn concurrency_limit_and_max_concurrent() {
    let (gh, _, token) = setup(Config {
        max_concurrent_per_installation: 2,
        ..config()
    })
    .await;
    gh.emu.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let calls = (0..5).map(|_| gh.tok(Method::GET, PUBLIC_KEY, &token, None));
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 403).count();
    assert_eq!((ok, limited), (2, 3), "{statuses:?}");
    let stats = gh.emu.stats();
    assert!(stats.max_concurrent >= 3, "{}", stats.max_concurrent);
    assert_eq!(stats.rate_limited, 3);
}

/// Runs `n` sequential calls and names each outcome.
async fn outcomes(gh: &Gh, token: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let outcome = match gh
            .call(
                Method::GET,
                PUBLIC_KEY,
                Some(&format!("Bearer {token}")),
                None,
            )
            .await
        {
            Err(_) => "dropped".to_owned(),
            Ok(resp) => {
                assert_rate_headers(&resp);
                let status = resp.status().as_u16();
                if matches!(status, 429 | 403) {
                    assert_eq!(header(&resp, "retry-after"), Some("7"));
                }
                status.to_string()
            }
        };
        out.push(outcome);
    }
    out
}

#[tokio::test]
async fn faults_follow_the_configured_rates_and_the_seed() {
    let (gh, _, token) = setup(config()).await;
    let faults = Faults {
        seed: 42,
        server_error: 0.2,
        rate_limited_429: 0.2,
        secondary_403: 0.2,
        dropped_connection: 0.2,
        retry_after_secs: 7,
        ..Faults::default()
    };
    gh.emu.set_faults(faults.clone());
    let n = 500;
    let first = outcomes(&gh, &token, n).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &first {
        let kind = match o.as_str() {
            "500" | "502" | "503" => "5xx",
            other => other,
        };
        *counts.entry(kind).or_default() += 1;
    }
    for kind in ["5xx", "429", "403", "dropped", "200"] {
        let rate = counts.get(kind).copied().unwrap_or(0) as f64 / n as f64;
        assert!((rate - 0.2).abs() < 0.06, "{kind}: {rate} ({counts:?})");
    }
    for code in ["500", "502", "503"] {
        assert!(first.iter().any(|o| o == code), "{code} never injected");
    }
    let injected = gh.emu.stats().faults_injected;
    assert_eq!(injected["dropped_connection"], counts["dropped"]);
    assert_eq!(injected["rate_limited_429"], counts["429"]);

    // The same seed gives the same sequence.
    gh.emu.set_faults(faults.clone());
    assert_eq!(outcomes(&gh, &token, n).await, first);
    // A secondary limit may come without `retry-after` (the client then waits a minute).
    gh.emu.set_faults(Faults {
        secondary_403: 1.0,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let resp = gh.tok(Method::GET, PUBLIC_KEY, &token, None).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(header(&resp, "retry-after"), None);
    gh.emu.set_faults(faults);
    // Faults do not count as rate-limit rejections.
    assert_eq!(gh.emu.stats().rate_limited, 0);
}

#[tokio::test]
async fn per_route_faults_and_latency() {
    let (gh, _, token) = setup(config()).await;
    gh.emu.set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets",
        Faults {
            server_error: 1.0,
            ..Faults::default()
        },
    );
    let resp = gh
        .tok(Method::GET, "/repos/acme/app/actions/secrets", &token, None)
        .await;
    assert!(resp.status().is_server_error());
    assert_rate_headers(&resp);
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        200
    );

    gh.emu.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let start = Instant::now();
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        200
    );
    assert!(start.elapsed() >= Duration::from_millis(150));

    gh.emu.set_faults(Faults {
        slow_response: 1.0,
        slow_response_delay: Duration::from_millis(500),
        ..Faults::default()
    });
    let timeout = gh
        .client
        .get(format!("{}{PUBLIC_KEY}", gh.emu.url()))
        .bearer_auth(&token)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timeout.unwrap_err().is_timeout());
    assert_eq!(gh.emu.stats().faults_injected["slow_response"], 1);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let (gh, _, token) = setup(config()).await;
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        200
    );
    let url = gh.emu.url();
    drop(gh);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::new();
    assert!(
        fresh
            .get(format!("{url}/repos/acme/app"))
            .send()
            .await
            .is_err()
    );
}

/// `Stats::waits` tells a client that retried before `retry-after` or before the primary
/// limit's reset from one that waited: the check the broker's fault test relies on.
#[tokio::test]
async fn waits_report_a_retry_that_came_before_it_was_allowed() {
    // retry-after: one retry at once (early), then one after the wait (in time).
    let (gh, _, token) = setup(config()).await;
    gh.emu.set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets/public-key",
        Faults {
            rate_limited_429: 1.0,
            retry_after_secs: 1,
            ..Faults::default()
        },
    );
    let first = gh.tok(Method::GET, PUBLIC_KEY, &token, None).await;
    assert_eq!(first.status(), 429);
    assert_eq!(header(&first, "retry-after"), Some("1"));
    let eager = gh.tok(Method::GET, PUBLIC_KEY, &token, None).await;
    assert_eq!(eager.status(), 429);
    let waits = gh.emu.stats().waits();
    assert_eq!(waits.followed, 1);
    assert_eq!(waits.early.len(), 1, "{waits:?}");
    assert!(
        waits.early[0]
            .starts_with("GET /repos/acme/app/actions/secrets/public-key: retry-after 1 s")
    );
    gh.emu.set_faults(Faults::default());
    gh.emu.set_faults_for(
        "GET /repos/{owner}/{repo}/actions/secrets/public-key",
        Faults::default(),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        200
    );
    let waits = gh.emu.stats().waits();
    assert_eq!((waits.followed, waits.early.len()), (2, 1), "{waits:?}");

    // The primary limit with a two-second window: the answer names the reset, a retry before
    // it is early, one after it is not (and is served: a new window).
    let (gh, _, token) = setup(Config {
        primary_limit_per_hour: 1,
        primary_window: Duration::from_secs(2),
        ..config()
    })
    .await;
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        200
    );
    let refused = gh.tok(Method::GET, PUBLIC_KEY, &token, None).await;
    assert_eq!(refused.status(), 403);
    let reset: i64 = header(&refused, "x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(reset > now && reset <= now + 2, "{reset} vs {now}");
    let waits = gh.emu.stats().waits();
    assert_eq!(waits.followed, 0, "{waits:?}");
    // Retried at once: early.
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        403
    );
    assert_eq!(gh.emu.stats().waits().early.len(), 1);
    // Until the reset: served, and not early.
    let until = (reset * 1000
        - time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000)
        .max(0);
    tokio::time::sleep(Duration::from_millis(until as u64 + 50)).await;
    assert_eq!(
        gh.tok(Method::GET, PUBLIC_KEY, &token, None).await.status(),
        200
    );
    let waits = gh.emu.stats().waits();
    assert_eq!((waits.followed, waits.early.len()), (2, 1), "{waits:?}");
}

/// Installation tokens live `Config::token_lifetime` (an hour unless a test shortens it).
#[tokio::test]
async fn tokens_live_the_configured_lifetime() {
    for (lifetime, expected) in [(None, 3600), (Some(300), 300)] {
        let mut config = config();
        if let Some(secs) = lifetime {
            config.token_lifetime = Duration::from_secs(secs);
        }
        let gh = Gh::with(config).await;
        let inst = gh.emu.install(ORG);
        let resp = gh
            .call(
                Method::POST,
                &format!("/app/installations/{inst}/access_tokens"),
                Some(&format!("Bearer {}", gh.jwt())),
                Some(json!({})),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: serde_json::Value = resp.json().await.unwrap();
        let expires = time::OffsetDateTime::parse(
            body["expires_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp();
        let left = expires - time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((expected - 2..=expected).contains(&left), "{left}");
    }
}
