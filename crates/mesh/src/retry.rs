//! One classification of a peer's errors, for every service of the mesh: is another attempt
//! of the same call worth it (the peer is down, restarting, or the call was cut in flight), or
//! is the answer final? And the backoff, with jitter, between attempts.
//!
//! Transient: UNAVAILABLE; ABORTED (a transaction that lost a race); RESOURCE_EXHAUSTED (a
//! rate limit); any error of the transport itself — a refused, reset or aborted connection, a
//! broken pipe, an HTTP/2 reset or GOAWAY, a connection closed before the answer — which tonic
//! reports as UNKNOWN ("transport error"), UNAVAILABLE, CANCELLED or INTERNAL with the cause in
//! the status's source chain; and, for an idempotent call only, DEADLINE_EXCEEDED. Everything
//! else is the peer's own answer, and final.
//!
//! A call may be retried after a crash in flight only when the peer recognises it as the same
//! call: every mutating call between services carries a request id (see ARCHITECTURE.md,
//! RELIABILITY).

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use orchestrator_status::{reason_of, with_reason};
use rand_core::RngCore as _;
use tonic::{Code, Status};

/// Whether the call can be made twice with the effect of once (it carries a request id the
/// peer keys its effect on, or it only reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Idempotent,
    NotIdempotent,
}

/// What a failed call is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Another attempt may succeed: the peer was down or the call was cut.
    Transient,
    /// The peer's answer: another attempt would get the same.
    Permanent,
}

/// Classifies a failed call to a peer.
pub fn classify(status: &Status, call: Call) -> Outcome {
    let transient = match status.code() {
        Code::Unavailable | Code::Aborted | Code::ResourceExhausted => true,
        Code::DeadlineExceeded => call == Call::Idempotent || broken_transport(status),
        Code::Unknown | Code::Cancelled | Code::Internal => broken_transport(status),
        _ => false,
    };
    if transient {
        Outcome::Transient
    } else {
        Outcome::Permanent
    }
}

/// True when the transport failed (rather than the peer answering): a connection or stream
/// error in the status's source chain, or, where tonic kept no source, its message.
pub fn broken_transport(status: &Status) -> bool {
    let mut next: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && transient_io(io.kind())
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && (h2.is_io()
                || h2.is_go_away()
                || h2.is_remote()
                    && matches!(
                        h2.reason(),
                        Some(h2::Reason::REFUSED_STREAM | h2::Reason::CANCEL)
                    ))
        {
            return true;
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_closed()
                || hyper.is_canceled()
                || hyper.is_incomplete_message()
                || hyper.is_timeout())
        {
            return true;
        }
        // A transport error of the channel (connecting, or the connection's task gone).
        if e.downcast_ref::<tonic::transport::Error>().is_some() {
            return true;
        }
        next = e.source();
    }
    // Statuses that crossed a process boundary or were rebuilt lose their source.
    let message = status.message().to_ascii_lowercase();
    [
        "transport error",
        "connection refused",
        "connection reset",
        "connection closed",
        "broken pipe",
        "h2 protocol error",
        "error trying to connect",
        "operation was canceled",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn transient_io(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | UnexpectedEof
            | TimedOut
            | AddrNotAvailable
    )
}

/// A failure as it is recorded: the status itself when it names its reason; otherwise one
/// with a stable reason, never UNKNOWN without one. A transport failure that is recorded as
/// final (its deadline passed) becomes UNAVAILABLE `<PEER>_UNAVAILABLE`; any other answer
/// without a reason keeps its code and message (UNKNOWN becomes INTERNAL) with reason
/// `<PEER>_FAILED`.
pub fn recorded(status: Status, peer: &str) -> Status {
    if reason_of(&status).is_some() {
        return status;
    }
    let name = peer.to_ascii_uppercase().replace([' ', '-'], "_");
    if status.code() == Code::Unavailable || broken_transport(&status) {
        return with_reason(
            Code::Unavailable,
            &format!("{name}_UNAVAILABLE"),
            format!("the {peer} is unavailable: {}", status.message()),
            &[],
        );
    }
    let code = match status.code() {
        Code::Unknown | Code::Ok => Code::Internal,
        code => code,
    };
    with_reason(code, &format!("{name}_FAILED"), status.message(), &[])
}

/// A peer's status as a service answers its own caller: a transport failure or UNAVAILABLE
/// becomes UNAVAILABLE with reason `<PEER>_UNAVAILABLE` (the caller retries with the same
/// request id); any other status passes through unchanged (the peer's own answer).
pub fn from_peer(peer: &'static str) -> impl Fn(Status) -> Status {
    move |status| {
        if reason_of(&status).is_none()
            && (status.code() == Code::Unavailable || broken_transport(&status))
        {
            recorded(status, peer)
        } else {
            status
        }
    }
}

/// Exponential backoff with full jitter: each wait is a random share of a ceiling that
/// doubles from `first` up to `max`, so replicas retrying the same peer do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            ceiling: first,
            max,
        }
    }

    /// The next wait: between half the current ceiling and the ceiling, which then doubles.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let share = f64::from(rand_core::OsRng.next_u32()) / f64::from(u32::MAX);
        ceiling / 2 + ceiling.mul_f64(share / 2.0)
    }
}

impl Default for Backoff {
    /// 200 ms doubling up to 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// Makes `call` again, after a backoff, while it fails transiently and `budget` (from the first
/// attempt) allows another wait; its own answer otherwise. Only for a call the peer recognises
/// as the same when repeated: one carrying the same request id, or a read.
pub async fn while_transient<T, F, Fut>(budget: Duration, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let status = match call().await {
            Ok(answer) => return Ok(answer),
            Err(status) => status,
        };
        let wait = backoff.next_wait();
        if classify(&status, Call::Idempotent) == Outcome::Permanent
            || started.elapsed() + wait > budget
        {
            return Err(status);
        }
        tokio::time::sleep(wait).await;
    }
}

/// A fresh request id for one call and its retries: `prefix` (what the call is for, for the
/// peer's audit record) and 16 random hex digits.
pub fn request_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}/{nonce}")
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
