//! Pending references a crash left behind, settled without a person: a background pass every
//! `BROKER_SETTLE_EVERY` over `pending` references older than `BROKER_SETTLE_PENDING_AFTER`
//! (1 minute: no write keeps one pending that long). GitHub has the secret (the broker died
//! between the PUT and its record) -> `present`; GitHub does not (it died before the PUT
//! arrived) -> `failed` with reason LOST_IN_CRASH, which ListProjectSecrets shows, so the
//! caller sends the value again.
//!
//! Safe with several replicas: each row is claimed in the transaction that settles it (`FOR
//! UPDATE SKIP LOCKED` on PostgreSQL; SQLite is single-node) and only while still pending.

use std::time::Duration;

use orchestrator_fields::ProjectId;
use orchestrator_github::SecretName;
use orchestrator_store::now_us;
use tonic::Status;

use crate::audit::Action;
use crate::db;
use crate::location::{Location, audited};
use crate::state::Broker;

/// The identity settle records are written by.
const SELF: &str = "secret-broker";

/// The message (and, in brackets, the reason) of a reference lost in a crash.
pub(crate) const LOST_IN_CRASH: &str =
    "the broker stopped before GitHub got this secret; send its value again [LOST_IN_CRASH]";

/// Runs the pass forever, every `every`, over pending rows older than `after`.
pub(crate) async fn run(broker: Broker, every: Duration, after: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = broker.settle_pending(after).await {
            tracing::warn!(error = %e.message(), "settling pending secret references failed");
        }
    }
}

impl Broker {
    /// One pass: every pending reference older than `after`, settled by what GitHub holds.
    pub(crate) async fn settle_pending(&self, after: Duration) -> Result<usize, Status> {
        let age = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
        let cutoff = now_us().saturating_sub(age);
        let stale = db::stale_pending(self.db.pool(), cutoff).await?;
        let mut settled = 0;
        for (project_id, location, name) in stale {
            // A project whose repository or token is unavailable now waits for the next pass.
            match self.settle_one(&project_id, &location, &name).await {
                Ok(true) => settled += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    project = %project_id, secret = %name, error = %e.message(),
                    "a pending secret reference stays pending for now"
                ),
            }
        }
        Ok(settled)
    }

    async fn settle_one(&self, project_id: &str, key: &str, name: &str) -> Result<bool, Status> {
        let project = ProjectId::parse(project_id)
            .map_err(|_| Status::internal("a stored project id does not parse"))?;
        let location = Location::from_key(key)
            .ok_or_else(|| Status::internal("a stored secret location does not parse"))?;
        let secret = SecretName::new(name)
            .map_err(|_| Status::internal("a stored secret name does not parse"))?;
        let reg = self.registered(&project).await?;
        let token = self.secrets_token(&reg, &location).await?;
        let at_github = match self
            .github
            .get_secret_at(&token.token, &location.at(&reg.repo), &secret)
            .await
        {
            Ok(meta) => meta.map(|meta| meta.updated_at),
            // The environment itself is gone (or was never created): so is the secret.
            Err(e) if e.status() == Some(404) => None,
            Err(e) => return Err(e.to_grpc()),
        };
        let key = key.to_owned();
        let dialect = self.db.dialect();
        let name = name.to_owned();
        self.ledger
            .write(move |conn| {
                Box::pin(async move {
                    if !db::claim_pending(&mut *conn, dialect, &project, &key, &name).await? {
                        return Ok((false, vec![]));
                    }
                    let detail = match &at_github {
                        Some(updated) => {
                            db::recover_pending(
                                &mut *conn,
                                &project,
                                &key,
                                &name,
                                updated,
                                now_us(),
                            )
                            .await?;
                            "settled: present at GitHub"
                        }
                        None => {
                            db::lose_pending(&mut *conn, &project, &key, &name, LOST_IN_CRASH)
                                .await?;
                            "settled: lost in a crash [LOST_IN_CRASH]"
                        }
                    };
                    // Recorded as the reconcile it is, done by the broker itself.
                    let entry = Action::ReconcileProjectSecrets
                        .on_secret(SELF, &project, audited(&key, &name))
                        .detail(detail);
                    Ok((true, vec![entry]))
                })
            })
            .await
    }
}
