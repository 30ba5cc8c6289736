#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::*;

/// One real call to `port` (plain HTTP/2), as a mesh client makes it.
async fn call(port: u16) -> Status {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let status = call(port).await;
    assert_eq!(classify(&status, Call::NotIdempotent), Outcome::Transient);
}

/// The peer dies with the call in flight: it took the request, then its connection closed
/// without an answer (what a SIGKILLed peer does). tonic reports it as UNKNOWN "transport
/// error" or an h2 error; either way it is worth another attempt, and recorded, it names the
/// peer instead of being UNKNOWN without a reason.
#[tokio::test]
async fn a_call_cut_in_flight_is_transient_and_recorded_with_a_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            // The request (preface, settings, headers) arrives; then the "process" dies.
            let _ = socket.read(&mut buf).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(socket);
        }
    });
    let status = call(port).await;
    assert_ne!(status.code(), Code::Ok);
    assert_eq!(
        classify(&status, Call::NotIdempotent),
        Outcome::Transient,
        "{status:?}"
    );
    let recorded = recorded(status, "secret broker");
    assert_eq!(recorded.code(), Code::Unavailable);
    assert_eq!(reason_of(&recorded).unwrap().0, "SECRET_BROKER_UNAVAILABLE");
}

#[test]
fn a_peers_answer_is_permanent_and_keeps_or_gets_a_reason() {
    for status in [
        Status::invalid_argument("bad"),
        Status::permission_denied("no"),
        Status::not_found("gone"),
        Status::internal("a bug"),
        Status::unknown(""),
        Status::cancelled("the server is being destroyed"),
    ] {
        assert_eq!(
            classify(&status, Call::Idempotent),
            Outcome::Permanent,
            "{status:?}"
        );
    }
    let kept = with_reason(Code::FailedPrecondition, "NO_REPOSITORY", "none", &[]);
    assert_eq!(
        reason_of(&recorded(kept, "secret broker")).unwrap().0,
        "NO_REPOSITORY"
    );
    let unknown = recorded(Status::unknown(""), "vault");
    assert_eq!(unknown.code(), Code::Internal);
    assert_eq!(reason_of(&unknown).unwrap().0, "VAULT_FAILED");
    // A status rebuilt from a message (no source left) is still read as a transport failure.
    let rebuilt = Status::unknown("transport error");
    assert_eq!(classify(&rebuilt, Call::NotIdempotent), Outcome::Transient);
}

#[test]
fn unavailable_always_and_a_deadline_only_when_idempotent_are_transient() {
    for status in [
        Status::unavailable("down"),
        Status::aborted("lost a race"),
        Status::resource_exhausted("rate limited"),
        Status::from(io::Error::from(io::ErrorKind::ConnectionReset)),
        Status::from_error(Box::new(io::Error::from(io::ErrorKind::BrokenPipe))),
    ] {
        assert_eq!(
            classify(&status, Call::NotIdempotent),
            Outcome::Transient,
            "{status:?}"
        );
    }
    let late = Status::deadline_exceeded("too slow");
    assert_eq!(classify(&late, Call::Idempotent), Outcome::Transient);
    assert_eq!(classify(&late, Call::NotIdempotent), Outcome::Permanent);
}

#[test]
fn backoff_grows_with_jitter_up_to_its_maximum() {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
    let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
    for (wait, ceiling) in waits.iter().zip([100u64, 200, 400, 400, 400, 400]) {
        assert!(*wait >= Duration::from_millis(ceiling / 2), "{waits:?}");
        assert!(*wait <= Duration::from_millis(ceiling), "{waits:?}");
    }
}

#[tokio::test]
async fn while_transient_repeats_a_cut_call_and_stops_at_an_answer_or_the_budget() {
    let mut calls = 0;
    let answer = while_transient(Duration::from_secs(5), || {
        calls += 1;
        let n = calls;
        async move {
            if n < 3 {
                Err(Status::unavailable("restarting"))
            } else {
                Ok(n)
            }
        }
    })
    .await;
    assert_eq!(answer.unwrap(), 3);

    let mut calls = 0;
    let refused: Result<(), Status> = while_transient(Duration::from_secs(5), || {
        calls += 1;
        async { Err(Status::permission_denied("no")) }
    })
    .await;
    assert_eq!(
        (refused.unwrap_err().code(), calls),
        (Code::PermissionDenied, 1)
    );

    let mut calls = 0;
    let down: Result<(), Status> = while_transient(Duration::from_millis(10), || {
        calls += 1;
        async { Err(Status::unavailable("down")) }
    })
    .await;
    assert_eq!((down.unwrap_err().code(), calls), (Code::Unavailable, 1));
}

#[test]
fn request_ids_are_fresh_and_keep_their_prefix() {
    let (a, b) = (request_id("prj-1/commit"), request_id("prj-1/commit"));
    assert_ne!(a, b);
    assert!(
        a.starts_with("prj-1/commit/") && a.len() == "prj-1/commit/".len() + 16,
        "{a}"
    );
}
