//! ReconcileProjectSecrets: the broker's references compared with what GitHub holds.
//!
//! Missing (ours, gone at GitHub), drifted (changed at GitHub since we wrote it) and
//! unexpected (someone else's) secrets are reported; only `pending` references that GitHub has
//! (a crash between the PUT and its record) are repaired, to `present`.

use std::collections::{BTreeMap, HashSet};

use orchestrator_fields::ProjectId;
use orchestrator_proto::secretbroker::v1 as pb;
use orchestrator_proto::timestamp;
use orchestrator_store::now_us;
use tonic::Status;

use crate::audit::Action;
use crate::db::{self, SecretRef, SecretState};
use crate::messages::github_time;
use crate::state::Broker;

/// What comparing the references with GitHub found.
#[derive(Debug, Default, PartialEq)]
struct Comparison {
    findings: Vec<pb::ReconcileFinding>,
    in_sync: i32,
    /// `pending` references GitHub has: (name, GitHub's `updated_at`).
    recovered: Vec<(String, String)>,
}

impl Broker {
    pub(crate) async fn reconcile(
        &self,
        caller: String,
        project_id: ProjectId,
        dry_run: bool,
    ) -> Result<pb::ReconcileProjectSecretsResponse, Status> {
        let reg = self.registered(&project_id).await?;
        let token = self.secrets_token(&reg).await?;
        let at_github: BTreeMap<String, String> = self
            .github
            .list_secrets(&token.token, &reg.repo)
            .await
            .map_err(|e| e.to_grpc())?
            .into_iter()
            .map(|s| (s.name.to_ascii_uppercase(), s.updated_at))
            .collect();
        let refs = db::all_secret_refs(self.db.pool(), &project_id).await?;
        let found = compare(&refs, &at_github, dry_run);
        if !dry_run && !found.recovered.is_empty() {
            let recovered = found.recovered;
            self.write(move |conn| {
                Box::pin(async move {
                    let mut entries = Vec::new();
                    for (name, updated) in recovered {
                        db::recover_pending(conn, &project_id, &name, &updated, now_us()).await?;
                        entries.push(
                            Action::ReconcileProjectSecrets
                                .on_secret(&caller, &project_id, &name)
                                .detail("recovered: present at GitHub"),
                        );
                    }
                    Ok(((), entries))
                })
            })
            .await?;
        }
        Ok(pb::ReconcileProjectSecretsResponse {
            findings: found.findings,
            in_sync_count: found.in_sync,
            reconcile_time: Some(timestamp(now_us())),
        })
    }
}

/// Compares the references (by name) with GitHub's secrets (upper-cased name -> `updated_at`).
fn compare(refs: &[SecretRef], at_github: &BTreeMap<String, String>, dry_run: bool) -> Comparison {
    let mut found = Comparison::default();
    let mut ours = HashSet::new();
    for r in refs {
        ours.insert(r.name.as_str());
        let recorded = r.github_updated_at.as_deref();
        let finding = |kind: pb::ReconcileFindingKind, github: Option<&String>, repaired: bool| {
            pb::ReconcileFinding {
                name: r.name.clone(),
                kind: kind as i32,
                recorded_github_update_time: recorded.and_then(github_time),
                github_update_time: github.and_then(|g| github_time(g)),
                repaired,
            }
        };
        match (r.state, at_github.get(&r.name)) {
            // A crash between GitHub accepting the PUT and our record: GitHub has it.
            (SecretState::Pending, Some(updated)) => {
                found.findings.push(finding(
                    pb::ReconcileFindingKind::Recovered,
                    Some(updated),
                    !dry_run,
                ));
                found.recovered.push((r.name.clone(), updated.clone()));
            }
            (_, None) => {
                found
                    .findings
                    .push(finding(pb::ReconcileFindingKind::Missing, None, false));
            }
            (SecretState::Present, Some(updated)) if recorded != Some(updated.as_str()) => {
                found.findings.push(finding(
                    pb::ReconcileFindingKind::Drifted,
                    Some(updated),
                    false,
                ));
            }
            _ => found.in_sync += 1,
        }
    }
    for (name, updated) in at_github {
        // Architecture Invariant: secrets someone else created are never touched. They are
        // reported, nothing more.
        if !ours.contains(name.as_str()) {
            found.findings.push(pb::ReconcileFinding {
                name: name.clone(),
                kind: pb::ReconcileFindingKind::Unexpected as i32,
                github_update_time: github_time(updated),
                ..Default::default()
            });
        }
    }
    found
}
