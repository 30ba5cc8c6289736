//! Property tests of the DigitalOcean, Cloudflare and Time4VPS response decoders: whatever a
//! provider (or something in its place) answers, status, headers and body, every client call
//! ends, in time, with a value or a typed error, never a panic. Answers are arbitrary JSON,
//! arbitrary bytes, and valid answers mutated (fields removed, wrong types, huge numbers,
//! unicode), from a scripted HTTP server on loopback.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_emulator_kit::scripted::{Answer, Scripted};
use orchestrator_providers::{
    Cloudflare, CreateDroplet, DigitalOcean, ProviderError, Retry, Time4Vps,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestRunner;
use secrecy::SecretString;
use serde_json::{Value, json};

fn config() -> ProptestConfig {
    // Found cases are kept as plain tests (below), not as seed files.
    ProptestConfig {
        failure_persistence: None,
        // PROPTEST_CASES (the long run) wins over the short run.
        ..ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
        )
    }
}

/// Arbitrary JSON, with the keys the decoders look for among random ones.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(key(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "id",
            "name",
            "status",
            "droplet",
            "droplets",
            "meta",
            "total",
            "networks",
            "v4",
            "ip_address",
            "type",
            "tags",
            "message",
            "ssh_key",
            "ssh_keys",
            "public_key",
            "success",
            "result",
            "errors",
            "code",
            "content",
            "comment",
            "ip",
            "os",
            "active_task",
            "task_id",
            "completed",
            "error",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,6}",
    ]
}

/// Valid answers of the three providers, as the emulators and the real services give them.
fn valid_answers() -> Vec<Value> {
    let droplet = json!({"id": 7, "name": "app-1", "status": "active", "tags": ["op-1"],
        "networks": {"v4": [{"ip_address": "203.0.113.7", "type": "public"}]}});
    let record = json!({"id": "r1", "type": "A", "name": "app.example.com",
        "content": "203.0.113.7", "comment": "orchestrator server srv-1", "tags": []});
    vec![
        json!({"droplet": droplet}),
        json!({"droplets": [droplet], "meta": {"total": 1}}),
        json!({"ssh_key": {"id": 5}}),
        json!({"ssh_keys": [{"id": 5, "public_key": "ssh-ed25519 AAAA"}]}),
        json!({"id": "not_found", "message": "Droplet already has a pending event."}),
        json!({"success": true, "result": [{"id": "z1"}], "errors": []}),
        json!({"success": true, "result": [record], "errors": []}),
        json!({"success": true, "result": record, "errors": []}),
        json!({"success": false, "result": null, "errors": [{"code": 81057, "message": "exists"}]}),
        json!({"id": 101, "ip": "203.0.113.9", "os": "ubuntu", "active_task": null}),
        json!({"id": 101, "active_task": {"name": "reinstall"}}),
        json!({"task_id": 9}),
        json!({"completed": "2026-01-01 00:00:00"}),
        json!({"error": ["wronglogin"]}),
    ]
}

/// A step into a JSON value.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    At(usize),
}

fn paths(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(Seg::Key(k.clone()));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(Seg::At(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, seg| match seg {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::At(i) => &mut v[*i],
    })
}

/// One change to a valid answer: a node replaced by arbitrary JSON, removed, made a huge or
/// negative number, or unicode text.
fn mutate(v: &mut Value, at: Index, op: u8, new: Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let path = all[at.index(all.len())].clone();
    match (op, path.split_last()) {
        (1, Some((last, parent))) => match (node(v, parent), last) {
            (Value::Object(m), Seg::Key(k)) => {
                m.remove(k);
            }
            (Value::Array(a), Seg::At(i)) => {
                a.remove(*i);
            }
            _ => {}
        },
        (2, _) => *node(v, &path) = json!(u64::MAX),
        (3, _) => *node(v, &path) = json!(-1),
        (4, _) => *node(v, &path) = json!(1e308),
        (5, _) => *node(v, &path) = json!("\u{202e}ünï\u{0}cødé\u{1F600}"),
        _ => *node(v, &path) = new,
    }
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        select(valid_answers()),
        vec((any::<Index>(), 0u8..6, json_value()), 0..4),
    )
        .prop_map(|(mut v, changes)| {
            for (at, op, new) in changes {
                mutate(&mut v, at, op, new);
            }
            v
        });
    prop_oneof![
        4 => mutated.prop_map(|v| v.to_string().into_bytes()),
        2 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => vec(any::<u8>(), 0..64),
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..3).prop_map(|n| n.to_string()),
        "[ -~]{0,16}",
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        3 => select(vec![200u16, 201, 204, 400, 401, 403, 404, 409, 422, 429, 500, 503]),
        1 => 200u16..600,
    ];
    let headers = vec(
        (
            select(vec![
                "retry-after",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "link",
            ]),
            header_value(),
        ),
        0..3,
    );
    (status, headers, body()).prop_map(|(status, headers, body)| Answer {
        status,
        headers,
        body,
        delay: Duration::ZERO,
    })
}

/// No retries (their waits are what is tested, not their count), short attempts.
fn retry() -> Retry {
    Retry {
        deadline: Duration::ZERO,
        base_backoff: Duration::from_millis(1),
        attempt_timeout: Duration::from_secs(5),
    }
}

fn token() -> SecretString {
    SecretString::from("token-canary-3f9a".to_owned())
}

/// A typed error that names its provider and none of the credentials.
fn check(e: &ProviderError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(e.reason().starts_with("PROVIDER_"), "{text}");
    prop_assert!(!text.contains("canary"), "{text}");
    Ok(())
}

fn run(test: impl Fn(&Scripted, Answer) -> Result<(), TestCaseError>) {
    let server = Scripted::start();
    let mut runner = TestRunner::new(config());
    runner
        .run(&answer(), |a| {
            server.set(a.clone());
            test(&server, a)
        })
        .unwrap();
}

macro_rules! ends_typed {
    ($server:expr, $call:expr) => {{
        let ended = $server.call($call);
        prop_assert!(ended.is_some(), "the call did not end");
        if let Some(Err(e)) = &ended {
            check(e)?;
        }
    }};
}

#[test]
fn prop_digitalocean_answers_never_panic() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    run(|server, _| {
        let client = DigitalOcean::new(&server.base, token(), retry()).unwrap();
        let spec = CreateDroplet {
            name: "app-1".into(),
            region: "fra1".into(),
            size: "s-1vcpu-1gb".into(),
            image: "ubuntu-24-04-x64".into(),
            tag: "op-1".into(),
            user_data: String::new(),
            ssh_keys: vec![],
        };
        ends_typed!(server, client.droplets_by_tag("op-1"));
        ends_typed!(server, client.droplet(7));
        ends_typed!(server, client.delete_droplet(7));
        ends_typed!(server, client.ensure_ssh_key("k", "ssh-ed25519 AAAA"));
        ends_typed!(server, client.create_droplet(&spec));
        ends_typed!(
            server,
            client.wait_for_address(7, Duration::ZERO, Duration::from_millis(1))
        );
        Ok(())
    });
}

#[test]
fn prop_cloudflare_answers_never_panic() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    run(|server, _| {
        let client = Cloudflare::new(&server.base, token(), retry()).unwrap();
        let owner = "orchestrator server srv-1";
        ends_typed!(server, client.zone_id("example.com"));
        ends_typed!(server, client.records_named("z1", "app.example.com"));
        ends_typed!(server, client.name_state("z1", "app.example.com", owner));
        ends_typed!(
            server,
            client.claim_a_record("z1", "app.example.com", "203.0.113.7", owner)
        );
        ends_typed!(server, client.point_a_record("z1", "r1", "203.0.113.7"));
        ends_typed!(server, client.find_owned("z1", "app.example.com", owner));
        ends_typed!(server, client.delete_record("z1", "r1"));
        Ok(())
    });
}

#[test]
fn prop_time4vps_answers_never_panic() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    run(|server, _| {
        let client = Time4Vps::new(&server.base, "user", token(), retry()).unwrap();
        ends_typed!(server, client.server(101));
        ends_typed!(server, client.reinstall(101, "ubuntu", "ssh-ed25519 AAAA"));
        ends_typed!(
            server,
            client.wait_for_task(101, 9, Duration::ZERO, Duration::from_millis(1))
        );
        Ok(())
    });
}

#[test]
fn a_slow_answer_that_asks_for_an_endless_wait_is_a_typed_error() {
    // Found while writing the properties above: `elapsed + retry-after` overflowed (a panic)
    // once an answer had taken a second and asked for u64::MAX seconds.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Scripted::start();
    server.set(Answer {
        status: 429,
        headers: vec![("retry-after", u64::MAX.to_string())],
        body: vec![],
        delay: Duration::from_millis(1100),
    });
    let retry = Retry {
        deadline: Duration::from_secs(60),
        ..retry()
    };
    let client = Time4Vps::new(&server.base, "user", token(), retry).unwrap();
    let err = server.call(client.server(101)).unwrap().unwrap_err();
    assert_eq!(err.reason(), "PROVIDER_RATE_LIMITED", "{err}");
}

#[test]
fn a_listing_that_never_ends_is_refused_after_max_pages() {
    // A listing that claims more droplets than it ever lists kept infra paging forever.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = Scripted::start();
    let page = json!({"droplets": [{"id": 7, "name": "app-1", "status": "active"}],
        "meta": {"total": u64::MAX}});
    server.set(Answer {
        status: 200,
        headers: vec![],
        body: page.to_string().into_bytes(),
        delay: Duration::ZERO,
    });
    let client = DigitalOcean::new(&server.base, token(), retry()).unwrap();
    let ended = server.call(client.droplets_by_tag("op-1"));
    let err = ended.expect("the listing ended").unwrap_err();
    assert_eq!(err.reason(), "PROVIDER_BAD_ANSWER", "{err}");
}
