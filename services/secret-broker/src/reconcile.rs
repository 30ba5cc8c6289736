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
use crate::location::{Location, audited};
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
        location: Location,
        dry_run: bool,
    ) -> Result<pb::ReconcileProjectSecretsResponse, Status> {
        let reg = self.registered(&project_id).await?;
        let token = self.secrets_token(&reg, &location).await?;
        let key = location.key();
        let listed = self
            .github
            .list_secrets_at(&token.token, &location.at(&reg.repo))
            .await;
        // An environment GitHub does not have holds no secrets: each reference is missing.
        let listed = match (&location, listed) {
            (Location::Environment(_), Err(e)) if e.status() == Some(404) => Ok(Vec::new()),
            (_, listed) => listed,
        };
        let at_github: BTreeMap<String, String> = listed
            .map_err(|e| e.to_grpc())?
            .into_iter()
            .map(|s| (s.name.to_ascii_uppercase(), s.updated_at))
            .collect();
        let refs = db::all_secret_refs(self.db.pool(), &project_id, &key).await?;
        let found = compare(&refs, &at_github, dry_run);
        if !dry_run && !found.recovered.is_empty() {
            let recovered = found.recovered;
            self.ledger
                .write(move |conn| {
                    Box::pin(async move {
                        let mut entries = Vec::new();
                        for (name, updated) in recovered {
                            db::recover_pending(conn, &project_id, &key, &name, &updated, now_us())
                                .await?;
                            entries.push(
                                Action::ReconcileProjectSecrets
                                    .on_secret(&caller, &project_id, audited(&key, &name))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str, state: SecretState, github_updated_at: Option<&str>) -> SecretRef {
        SecretRef {
            name: name.to_owned(),
            location: crate::location::REPOSITORY_KEY.to_owned(),
            state,
            github_updated_at: github_updated_at.map(str::to_owned),
            key_id: None,
            recorded_us: 0,
            written_by: "spiffe://test/api".to_owned(),
            deploy: 0,
            last_error: None,
        }
    }

    #[test]
    fn each_reference_is_in_sync_or_one_finding_and_foreign_secrets_are_only_reported() {
        let t1 = "2024-01-01T00:00:00Z";
        let t2 = "2024-02-01T00:00:00Z";
        let refs = [
            reference("DRIFTED", SecretState::Present, Some(t1)),
            reference("FAILED", SecretState::Failed, None),
            reference("GONE", SecretState::Present, Some(t1)),
            reference("PENDING", SecretState::Pending, None),
            reference("SAME", SecretState::Present, Some(t1)),
        ];
        let at_github: BTreeMap<String, String> = [
            ("DRIFTED", t2),
            ("FAILED", t1),
            ("FOREIGN", t1),
            ("PENDING", t2),
            ("SAME", t1),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
        let found = compare(&refs, &at_github, false);
        let kinds: Vec<_> = found
            .findings
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.repaired))
            .collect();
        use pb::ReconcileFindingKind as K;
        assert_eq!(
            kinds,
            [
                ("DRIFTED", K::Drifted as i32, false),
                ("GONE", K::Missing as i32, false),
                ("PENDING", K::Recovered as i32, true),
                ("FOREIGN", K::Unexpected as i32, false),
            ]
        );
        assert_eq!(found.in_sync, 2, "SAME, and FAILED (which GitHub has)");
        assert_eq!(found.recovered, [("PENDING".to_owned(), t2.to_owned())]);
        // A dry run finds the same and repairs nothing.
        let dry = compare(&refs, &at_github, true);
        assert!(dry.findings.iter().all(|f| !f.repaired));
        assert_eq!(dry.recovered, found.recovered);
    }
}
