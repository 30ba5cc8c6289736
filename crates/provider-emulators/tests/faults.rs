//! Seeded fault injection on all three emulators: configured rates, reproducible sequences,
//! per-route overrides, latency, provider-shaped error bodies.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{CF_TOKEN, DO_TOKEN, T4_PASSWORD, T4_USER, client, header};
use orchestrator_provider_emulators::{
    CfConfig, DoConfig, Faults, ProviderEmulators, ProvidersConfig, T4Config,
};
use serde_json::Value;

async fn emulators() -> ProviderEmulators {
    ProviderEmulators::start(ProvidersConfig {
        digitalocean: DoConfig {
            tokens: vec![DO_TOKEN.to_owned()],
            rate_limit_per_minute: 0,
            rate_limit_per_hour: 0,
            ..DoConfig::default()
        },
        cloudflare: CfConfig {
            tokens: vec![CF_TOKEN.to_owned()],
            zones: vec!["orchestrator.test".to_owned()],
            rate_limit: 0,
            ..CfConfig::default()
        },
        time4vps: T4Config {
            user: T4_USER.to_owned(),
            password: T4_PASSWORD.to_owned(),
            servers: vec![(101, "203.0.113.10".to_owned())],
            ..T4Config::default()
        },
    })
    .await
    .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Do,
    Cf,
    T4,
}

fn request(
    client: &reqwest::Client,
    e: &ProviderEmulators,
    which: Which,
) -> reqwest::RequestBuilder {
    match which {
        Which::Do => client
            .get(format!("{}/v2/droplets", e.digitalocean.url()))
            .bearer_auth(DO_TOKEN),
        Which::Cf => client
            .get(format!("{}/client/v4/zones", e.cloudflare.url()))
            .bearer_auth(CF_TOKEN),
        Which::T4 => client
            .get(format!("{}/api/server", e.time4vps.url()))
            .basic_auth(T4_USER, Some(T4_PASSWORD)),
    }
}

/// Runs `n` sequential calls and names each outcome; checks error shapes on the way.
async fn outcomes(e: &ProviderEmulators, which: Which, n: usize) -> Vec<String> {
    let client = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let outcome = match request(&client, e, which).send().await {
            Err(_) => "dropped".to_owned(),
            Ok(resp) => {
                let status = resp.status().as_u16();
                if status == 429 {
                    assert_eq!(header(&resp, "retry-after"), Some("7"));
                }
                if matches!(which, Which::Do) {
                    assert!(header(&resp, "ratelimit-remaining").is_some());
                }
                let body: Value = resp.json().await.unwrap();
                if status != 200 {
                    match which {
                        Which::Do => assert!(body["id"].is_string(), "{body}"),
                        Which::Cf => {
                            assert_eq!(body["success"], false);
                            assert!(body["errors"][0]["code"].is_u64(), "{body}");
                        }
                        Which::T4 => assert!(body["error"][0].is_string(), "{body}"),
                    }
                }
                status.to_string()
            }
        };
        out.push(outcome);
    }
    out
}

fn faults() -> Faults {
    Faults {
        seed: 42,
        server_error: 0.2,
        rate_limited_429: 0.2,
        dropped_connection: 0.2,
        retry_after_secs: 7,
        ..Faults::default()
    }
}

#[tokio::test]
async fn faults_follow_the_configured_rates_and_the_seed() {
    let e = emulators().await;
    e.set_faults(faults());
    let n = 400;
    for which in [Which::Do, Which::Cf, Which::T4] {
        let first = outcomes(&e, which, n).await;
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &first {
            let kind = match o.as_str() {
                "500" | "502" | "503" => "5xx",
                other => other,
            };
            *counts.entry(kind).or_default() += 1;
        }
        for (kind, expected) in [("5xx", 0.2), ("429", 0.2), ("dropped", 0.2), ("200", 0.4)] {
            let rate = counts.get(kind).copied().unwrap_or(0) as f64 / n as f64;
            assert!(
                (rate - expected).abs() < 0.07,
                "{which:?} {kind}: {rate} ({counts:?})"
            );
        }
        for code in ["500", "502", "503"] {
            assert!(
                first.iter().any(|o| o == code),
                "{which:?}: {code} never injected"
            );
        }
        let stats = match which {
            Which::Do => e.digitalocean.stats(),
            Which::Cf => e.cloudflare.stats(),
            Which::T4 => e.time4vps.stats(),
        };
        assert_eq!(
            stats.faults_injected["dropped_connection"],
            counts["dropped"]
        );
        assert_eq!(stats.faults_injected["rate_limited_429"], counts["429"]);
        assert_eq!(stats.rate_limited, 0, "faults are not rate-limit refusals");

        // The same seed gives the same sequence.
        match which {
            Which::Do => e.digitalocean.set_faults(faults()),
            Which::Cf => e.cloudflare.set_faults(faults()),
            Which::T4 => e.time4vps.set_faults(faults()),
        }
        assert_eq!(outcomes(&e, which, n).await, first, "{which:?}");
    }
}

#[tokio::test]
async fn mixed_faults_hit_about_the_rate() {
    let e = emulators().await;
    e.digitalocean.set_faults(Faults {
        retry_after_secs: 7,
        ..Faults::mixed(9, 0.3)
    });
    let out = outcomes(&e, Which::Do, 300).await;
    let ok = out.iter().filter(|o| *o == "200").count() as f64 / 300.0;
    assert!((ok - 0.7).abs() < 0.08, "{ok}");
}

#[tokio::test]
async fn per_route_faults_latency_and_clearing() {
    let e = emulators().await;
    let client = client();
    e.cloudflare.set_faults_for(
        "GET /client/v4/zones",
        Faults {
            server_error: 1.0,
            ..Faults::default()
        },
    );
    let resp = request(&client, &e, Which::Cf).send().await.unwrap();
    assert!(resp.status().is_server_error());
    let verify = client
        .get(format!(
            "{}/client/v4/user/tokens/verify",
            e.cloudflare.url()
        ))
        .bearer_auth(CF_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(verify.status(), 200);

    e.time4vps.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let started = Instant::now();
    let resp = request(&client, &e, Which::T4).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    e.digitalocean.set_faults(Faults {
        slow_response: 1.0,
        slow_response_delay: Duration::from_millis(500),
        ..Faults::default()
    });
    let timeout = request(&client, &e, Which::Do)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timeout.unwrap_err().is_timeout());
    assert_eq!(e.digitalocean.stats().faults_injected["slow_response"], 1);

    e.cloudflare.clear_faults();
    e.digitalocean.clear_faults();
    assert_eq!(
        request(&client, &e, Which::Cf)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        request(&client, &e, Which::Do)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn faults_come_after_auth() {
    let e = emulators().await;
    e.set_faults(Faults {
        server_error: 1.0,
        ..Faults::default()
    });
    let client = client();
    let resp = client
        .get(format!("{}/v2/droplets", e.digitalocean.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn shutdown_stops_the_servers() {
    let e = emulators().await;
    let client = client();
    assert_eq!(
        request(&client, &e, Which::Do)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let urls = e.urls_json();
    drop(e);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = reqwest::Client::new();
    for key in ["digitalocean", "cloudflare", "time4vps"] {
        let url = urls[key].as_str().unwrap();
        assert!(fresh.get(url).send().await.is_err(), "{key} still answers");
    }
}
