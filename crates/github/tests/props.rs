//! Property tests of the GitHub response decoders: whatever GitHub (or something in its
//! place) answers, status, rate-limit headers, `link` and body, every client call ends, in
//! time, with a value or a typed error that is never INTERNAL and never shows a token. Answers
//! are arbitrary JSON, arbitrary bytes, and valid answers mutated (fields removed, wrong types,
//! huge numbers, unicode), from a scripted HTTP server on loopback.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_github::{AppAuth, GitHub, GitHubError, RepoRef, RetryPolicy, SecretName};
use orchestrator_github_emulator::testing::{APP_ID, app_key};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestRunner;
use secrecy::SecretString;
use serde_json::{Value, json};
use tonic::Code;

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

use orchestrator_emulator_kit::scripted::{Answer, Scripted};

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

/// Valid answers, as GitHub documents them.
fn valid_answers() -> Vec<Value> {
    let secret = json!({"name": "DEPLOY_KEY", "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z"});
    vec![
        json!({"key_id": "568250167242549743", "key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}),
        json!({"total_count": 1, "secrets": [secret]}),
        secret,
        json!({"id": 1, "name": "app", "full_name": "acme/app",
            "html_url": "https://github.com/acme/app", "description": null}),
        json!({"sha": "3d21ec53", "content": "aGVsbG8=\n"}),
        json!({"token": "ghs_canary", "expires_at": "2026-01-01T00:00:00Z",
            "permissions": {"contents": "read"}, "repositories": [{"name": "app"}]}),
        json!({"id": 42}),
        json!({"message": "Bad credentials"}),
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
        select(vec![
            i64::MIN.to_string(),
            i64::MAX.to_string(),
            u64::MAX.to_string(),
            "-1".into(),
            "0".into(),
            "<https://api.github.com/x?page=2>; rel=\"next\"".into()
        ]),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..3).prop_map(|n| n.to_string()),
        "[ -~]{0,16}",
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        3 => select(vec![200u16, 201, 204, 401, 403, 404, 409, 422, 429, 500, 503]),
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
        0..4,
    );
    (status, headers, body()).prop_map(|(status, headers, body)| Answer {
        status,
        headers,
        body,
        delay: Duration::ZERO,
    })
}

/// No retries (their waits are what is tested, not their count), short attempts.
fn retry() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::ZERO,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        secondary_wait: Duration::from_millis(1),
        attempt_timeout: Duration::from_secs(5),
    }
}

fn client(server: &Scripted, retry: RetryPolicy) -> GitHub {
    // octocrab's transport starts a task: it is built inside the server's runtime.
    let _runtime = server.rt.enter();
    let app = AppAuth::from_pem(APP_ID, &SecretString::from(app_key().0.clone())).unwrap();
    GitHub::new(&server.base, app, retry).unwrap()
}

fn token() -> SecretString {
    SecretString::from("ghs_token-canary-3f9a".to_owned())
}

/// A typed error: never INTERNAL (that is for our own side), never a token.
fn check(e: &GitHubError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(
        !matches!(e, GitHubError::Decode(_) | GitHubError::AppKey(_)),
        "{text}"
    );
    prop_assert_ne!(e.to_grpc().code(), Code::Internal, "{}", text);
    prop_assert!(!text.contains("canary"), "{text}");
    Ok(())
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
fn prop_github_answers_never_panic_and_are_never_internal() {
    let server = Scripted::start();
    let github = client(&server, retry());
    let repo = RepoRef::new("acme", "app").unwrap();
    let name = SecretName::new("DEPLOY_KEY").unwrap();
    let mut runner = TestRunner::new(config());
    runner
        .run(&answer(), |a| {
            server.set(a);
            let t = token();
            ends_typed!(server, github.public_key(&t, &repo));
            ends_typed!(server, github.list_secrets(&t, &repo));
            ends_typed!(server, github.get_secret(&t, &repo, &name));
            ends_typed!(
                server,
                github.put_secret(&t, &repo, &name, "c2VhbGVk", "k1")
            );
            ends_typed!(server, github.delete_secret(&t, &repo, &name));
            ends_typed!(server, github.repository(&t, &repo));
            ends_typed!(
                server,
                github.create_org_repository(&t, "acme", "app", "", true)
            );
            ends_typed!(
                server,
                github.put_file(&t, &repo, "README.md", b"hello", "init")
            );
            ends_typed!(server, github.revoke_token(&t));
            ends_typed!(server, github.installation_for_repo(&repo));
            ends_typed!(
                server,
                github.mint_uncached(42, &["app"], &[("contents", "read")])
            );
            Ok(())
        })
        .unwrap();
}

fn set(
    server: &Scripted,
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: &str,
    delay: Duration,
) {
    server.set(Answer {
        status,
        headers,
        body: body.as_bytes().to_vec(),
        delay,
    });
}

#[test]
fn a_rate_limit_reset_at_the_smallest_time_is_a_typed_error() {
    // Found while writing the property above (which meets this exact answer only in long
    // runs): `reset - now` overflowed, a panic in debug builds.
    let server = Scripted::start();
    let github = client(&server, retry());
    let headers = vec![
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", i64::MIN.to_string()),
    ];
    set(&server, 403, headers, "{}", Duration::ZERO);
    let repo = RepoRef::new("acme", "app").unwrap();
    let err = server
        .call(github.public_key(&token(), &repo))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited { .. }), "{err}");
}

#[test]
fn a_slow_answer_that_asks_for_an_endless_wait_is_a_typed_error() {
    // `elapsed + retry-after` overflowed (a panic) once an answer had taken a second and
    // asked for u64::MAX seconds.
    let server = Scripted::start();
    let github = client(
        &server,
        RetryPolicy {
            deadline: Duration::from_secs(60),
            ..retry()
        },
    );
    let headers = vec![("retry-after", u64::MAX.to_string())];
    set(&server, 429, headers, "{}", Duration::from_millis(1100));
    let repo = RepoRef::new("acme", "app").unwrap();
    let err = server
        .call(github.public_key(&token(), &repo))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited { .. }), "{err}");
}

#[test]
fn a_listing_that_always_has_a_next_page_is_refused_after_max_pages() {
    // A `link: rel="next"` on every page kept the broker paging (and collecting) forever.
    let server = Scripted::start();
    let github = client(&server, retry());
    let page =
        json!({"total_count": 1, "secrets": [{"name": "A", "created_at": "", "updated_at": ""}]});
    let headers = vec![(
        "link",
        "<https://api.github.com/x?page=2>; rel=\"next\"".to_owned(),
    )];
    set(&server, 200, headers, &page.to_string(), Duration::ZERO);
    let repo = RepoRef::new("acme", "app").unwrap();
    let ended = server.call(github.list_secrets(&token(), &repo));
    let err = ended.expect("the listing ended").unwrap_err();
    assert!(matches!(err, GitHubError::BadAnswer(_)), "{err}");
}

#[test]
fn an_answer_of_the_wrong_shape_is_unknown_not_internal() {
    // Every undecodable GitHub answer was INTERNAL (GITHUB_ERROR).
    let server = Scripted::start();
    let github = client(&server, retry());
    let repo = RepoRef::new("acme", "app").unwrap();
    for body in [
        "<html>bad gateway</html>",
        r#"{"key_id": 1}"#,
        r#"{"key_id": "1", "key": "c2hvcnQ="}"#,
    ] {
        set(&server, 200, vec![], body, Duration::ZERO);
        let err = server
            .call(github.public_key(&token(), &repo))
            .unwrap()
            .unwrap_err();
        let status = err.to_grpc();
        assert_eq!(status.code(), Code::Unknown, "{err}");
        let details = String::from_utf8_lossy(status.details()).into_owned();
        assert!(details.contains("GITHUB_BAD_ANSWER"), "{status:?}");
    }
}
