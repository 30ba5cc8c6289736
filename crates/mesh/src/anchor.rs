//! Audit checkpoints: each service's chain head, MACed with its `AUDIT_KEY`, printed to its log
//! (one line, `audit checkpoint checkpoint={json}`) and its sequence number on `/metrics`, at
//! start, every `ORCH_AUDIT_CHECKPOINT_INTERVAL` (default 60 s) and at shutdown. Kept outside
//! the database (a log collector), they let `orchctl audit verify --checkpoint` prove that
//! the database was not cut back behind them.

use std::time::Duration;

use orchestrator_audit::Ledger;

/// The newest checkpoint's sequence number.
pub const CHECKPOINT_SEQ: &str = "orchestrator_audit_checkpoint_seq";
/// When the newest checkpoint was taken (seconds since the epoch).
pub const CHECKPOINT_TIME: &str = "orchestrator_audit_checkpoint_timestamp_seconds";

/// Takes a checkpoint of `service`'s chain and emits it. The MAC goes to the log only: as a
/// metrics label it would start a new series every interval.
pub async fn emit<E>(ledger: &Ledger<E>, service: &str, reason: &'static str) {
    match ledger.checkpoint(service).await {
        Ok(checkpoint) => {
            metrics::gauge!(CHECKPOINT_SEQ).set(checkpoint.seq as f64);
            metrics::gauge!(CHECKPOINT_TIME).set(checkpoint.at_us as f64 / 1e6);
            tracing::info!(
                target: "audit_checkpoint",
                checkpoint = %checkpoint.to_json(),
                reason,
                "audit checkpoint"
            );
        }
        Err(error) => tracing::warn!(%error, reason, "audit checkpoint failed"),
    }
}

/// Emits a checkpoint now and then every `interval`, for as long as the process runs.
pub fn spawn_periodic<E: 'static>(ledger: Ledger<E>, service: &'static str, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reason = "start";
        loop {
            tick.tick().await;
            emit(&ledger, service, reason).await;
            reason = "interval";
        }
    });
}
