//! Every query, on SQLite and on PostgreSQL (as the service's own role, as in production).

use std::time::Duration;

use orchestrator_store::testing::TestDatabase;
use orchestrator_store::{Database, Dialect};
use sqlx::Any;
use sqlx::pool::PoolConnection;

use super::*;

const SERVICE: &str = "secret-broker";
const REPO: &str = crate::location::REPOSITORY_KEY;

/// The broker's tables in `test_db`, as the service's start leaves them.
async fn migrated(test_db: &TestDatabase) -> Database {
    let dialect = test_db.dialect();
    test_db
        .open(
            SERVICE,
            [
                orchestrator_audit::migrations(dialect),
                crate::migrations(dialect),
            ],
        )
        .await
}

/// A migrated database of each dialect (the `TestDatabase` keeps it alive).
async fn databases() -> Vec<(TestDatabase, Database)> {
    TestDatabase::both(SERVICE, |d| {
        vec![orchestrator_audit::migrations(d), crate::migrations(d)]
    })
    .await
}

async fn conn(db: &Database) -> PoolConnection<Any> {
    db.pool().acquire().await.unwrap()
}

fn project(id: &str) -> ProjectId {
    ProjectId::parse(id).unwrap()
}

fn name(raw: &str) -> SecretName {
    SecretName::new(raw).unwrap()
}

async fn register(db: &Database, project_id: &str, repo: &str) {
    let repo = RepoRef::new("acme", repo).unwrap();
    insert_repository(&mut *conn(db).await, &project(project_id), &repo, 42, 1_000)
        .await
        .unwrap();
}

async fn state_of(db: &Database, project_id: &str, secret: &str) -> (SecretState, Option<String>) {
    let r = all_secret_refs(db.pool(), &project(project_id), REPO)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == secret)
        .unwrap();
    (r.state, r.last_error)
}

async fn flag(db: &Database, project_id: &ProjectId, secret: &str) -> Option<bool> {
    find_deploy_flag(db.pool(), project_id, REPO, &name(secret))
        .await
        .unwrap()
}

fn write(outcome: WriteOutcome, key_id: &str, at: Option<&str>, recorded_us: i64) -> WriteRecord {
    WriteRecord {
        outcome,
        key_id: key_id.to_owned(),
        github_updated_at: at.map(str::to_owned),
        recorded_us,
    }
}

#[test]
fn stored_spellings_round_trip_and_unknown_ones_are_errors() {
    for state in [
        SecretState::Pending,
        SecretState::Present,
        SecretState::Failed,
    ] {
        assert_eq!(SecretState::try_from(state.as_str().to_owned()), Ok(state));
    }
    for outcome in [WriteOutcome::Created, WriteOutcome::Updated] {
        assert_eq!(
            WriteOutcome::try_from(outcome.as_str().to_owned()),
            Ok(outcome)
        );
    }
    assert!(SecretState::try_from("deleted".to_owned()).is_err());
    assert!(SecretState::try_from("Present".to_owned()).is_err());
    assert!(WriteOutcome::try_from("replaced".to_owned()).is_err());
    assert_eq!(
        WriteOutcome::from(PutOutcome::Created),
        WriteOutcome::Created
    );
    assert_eq!(
        WriteOutcome::from(PutOutcome::Updated),
        WriteOutcome::Updated
    );
}

#[tokio::test]
async fn the_registry_holds_one_repository_per_project_and_one_project_per_repository() {
    for (_t, db) in databases().await {
        assert!(
            find_repository(db.pool(), &project("p1"))
                .await
                .unwrap()
                .is_none()
        );
        register(&db, "p1", "app1").await;
        let row = find_repository(db.pool(), &project("p1"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                row.owner.as_str(),
                row.name.as_str(),
                row.installation_id,
                row.created_us
            ),
            ("acme", "app1", 42, 1_000)
        );
        let app1 = RepoRef::new("acme", "app1").unwrap();
        let app2 = RepoRef::new("acme", "app2").unwrap();
        // GitHub's names ignore case: another spelling is the same repository.
        let app1_upper = RepoRef::new("ACME", "App1").unwrap();
        for (project_id, repo) in [("p1", &app2), ("p2", &app1), ("p3", &app1_upper)] {
            let err = insert_repository(&mut *conn(&db).await, &project(project_id), repo, 1, 2)
                .await
                .unwrap_err();
            assert!(
                matches!(err, StoreError::Duplicate(_)),
                "{:?}: {err:?}",
                db.dialect()
            );
        }
    }
}

#[tokio::test]
async fn a_write_goes_pending_then_present_and_a_failure_never_hides_a_present_value() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        let (p1, a) = (project("p1"), name("A"));
        let mut c = conn(&db).await;
        record_pending(&mut c, &p1, REPO, &a, "spiffe://t/api", false, 10)
            .await
            .unwrap();
        assert_eq!(state_of(&db, "p1", "A").await, (SecretState::Pending, None));

        let r1 = RequestId::parse("r1").unwrap();
        let first = write(
            WriteOutcome::Created,
            "k1",
            Some("2024-01-01T00:00:00Z"),
            20,
        );
        record_present(&mut c, &r1, &p1, REPO, &a, &first)
            .await
            .unwrap();
        let refs = all_secret_refs(db.pool(), &p1, REPO).await.unwrap();
        assert_eq!(refs.len(), 1);
        let r = &refs[0];
        assert_eq!(r.state, SecretState::Present);
        assert_eq!(r.github_updated_at.as_deref(), Some("2024-01-01T00:00:00Z"));
        assert_eq!((r.key_id.as_deref(), r.recorded_us), (Some("k1"), 20));
        assert_eq!(r.written_by, "spiffe://t/api");
        assert!(!r.is_deploy_credential());

        // Another write of the same secret: it stays present (GitHub has the old value), names
        // its new writer, and a failure keeps it present with the error.
        record_pending(&mut c, &p1, REPO, &a, "spiffe://t/scaffolder", true, 30)
            .await
            .unwrap();
        assert_eq!(state_of(&db, "p1", "A").await.0, SecretState::Present);
        record_failed(&mut c, &p1, REPO, &a, "GitHub answered 500")
            .await
            .unwrap();
        assert_eq!(
            state_of(&db, "p1", "A").await,
            (SecretState::Present, Some("GitHub answered 500".to_owned()))
        );
        let r = &all_secret_refs(db.pool(), &p1, REPO).await.unwrap()[0];
        assert_eq!(r.written_by, "spiffe://t/scaffolder");
        assert!(!r.is_deploy_credential(), "the first write decides");

        // A new secret whose write fails is failed; a later success clears the error.
        let b = name("B");
        record_pending(&mut c, &p1, REPO, &b, "spiffe://t/api", false, 40)
            .await
            .unwrap();
        record_failed(&mut c, &p1, REPO, &b, "refused")
            .await
            .unwrap();
        assert_eq!(
            state_of(&db, "p1", "B").await,
            (SecretState::Failed, Some("refused".to_owned()))
        );
        let r2 = RequestId::parse("r2").unwrap();
        record_present(
            &mut c,
            &r2,
            &p1,
            REPO,
            &b,
            &write(WriteOutcome::Created, "k1", None, 50),
        )
        .await
        .unwrap();
        assert_eq!(state_of(&db, "p1", "B").await, (SecretState::Present, None));
    }
}

#[tokio::test]
async fn a_request_id_answers_its_first_write_per_project_and_secret() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        register(&db, "p2", "app2").await;
        let (p1, p2, a) = (project("p1"), project("p2"), name("A"));
        let r1 = RequestId::parse("r1").unwrap();
        let mut c = conn(&db).await;
        assert_eq!(
            find_write(db.pool(), &r1, &p1, REPO, &a).await.unwrap(),
            None
        );
        record_pending(&mut c, &p1, REPO, &a, "spiffe://t/api", false, 1)
            .await
            .unwrap();
        let first = write(WriteOutcome::Created, "k1", Some("2024-01-01T00:00:00Z"), 2);
        record_present(&mut c, &r1, &p1, REPO, &a, &first)
            .await
            .unwrap();
        // The same request again records nothing new: the first answer stands.
        let again = write(WriteOutcome::Updated, "k2", None, 3);
        record_present(&mut c, &r1, &p1, REPO, &a, &again)
            .await
            .unwrap();
        assert_eq!(
            find_write(db.pool(), &r1, &p1, REPO, &a).await.unwrap(),
            Some(first)
        );
        // Per project and per secret.
        assert_eq!(
            find_write(db.pool(), &r1, &p2, REPO, &a).await.unwrap(),
            None
        );
        assert_eq!(
            find_write(db.pool(), &r1, &p1, REPO, &name("B"))
                .await
                .unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn deploy_flags_and_deletes_concern_one_projects_own_references() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        register(&db, "p2", "app2").await;
        let (p1, p2) = (project("p1"), project("p2"));
        let mut c = conn(&db).await;
        record_pending(
            &mut c,
            &p1,
            REPO,
            &name("DEPLOY_HOST"),
            "spiffe://t/infra",
            true,
            1,
        )
        .await
        .unwrap();
        record_pending(&mut c, &p1, REPO, &name("A"), "spiffe://t/api", false, 1)
            .await
            .unwrap();
        record_pending(&mut c, &p2, REPO, &name("A"), "spiffe://t/api", false, 1)
            .await
            .unwrap();
        assert_eq!(flag(&db, &p1, "DEPLOY_HOST").await, Some(true));
        assert_eq!(flag(&db, &p1, "A").await, Some(false));
        assert_eq!(flag(&db, &p1, "FOREIGN").await, None);

        delete_secret_ref(&mut c, &p1, REPO, &name("A"))
            .await
            .unwrap();
        assert_eq!(flag(&db, &p1, "A").await, None);
        assert_eq!(flag(&db, &p2, "A").await, Some(false));
    }
}

#[tokio::test]
async fn references_list_by_name_in_keyset_pages() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        register(&db, "p2", "app2").await;
        let p1 = project("p1");
        let mut c = conn(&db).await;
        for n in ["C", "A", "E", "B", "D"] {
            record_pending(&mut c, &p1, REPO, &name(n), "spiffe://t/api", false, 1)
                .await
                .unwrap();
        }
        record_pending(
            &mut c,
            &project("p2"),
            REPO,
            &name("ZZ"),
            "spiffe://t/api",
            false,
            1,
        )
        .await
        .unwrap();
        let names = |refs: Vec<SecretRef>| refs.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(
            names(list_secret_refs(db.pool(), &p1, REPO, "", 3).await.unwrap()),
            ["A", "B", "C"]
        );
        assert_eq!(
            names(
                list_secret_refs(db.pool(), &p1, REPO, "C", 3)
                    .await
                    .unwrap()
            ),
            ["D", "E"]
        );
        assert!(
            list_secret_refs(db.pool(), &p1, REPO, "E", 3)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            names(all_secret_refs(db.pool(), &p1, REPO).await.unwrap()),
            ["A", "B", "C", "D", "E"]
        );
    }
}

#[tokio::test]
async fn recovery_settles_pending_references_only() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        let p1 = project("p1");
        let mut c = conn(&db).await;
        for n in ["PENDING", "FAILED"] {
            record_pending(&mut c, &p1, REPO, &name(n), "spiffe://t/api", false, 1)
                .await
                .unwrap();
        }
        record_failed(&mut c, &p1, REPO, &name("FAILED"), "refused")
            .await
            .unwrap();
        for n in ["PENDING", "FAILED"] {
            recover_pending(&mut c, &p1, REPO, n, "2024-03-01T00:00:00Z", 99)
                .await
                .unwrap();
        }
        let refs = all_secret_refs(db.pool(), &p1, REPO).await.unwrap();
        let (failed, pending) = (&refs[0], &refs[1]);
        assert_eq!(failed.state, SecretState::Failed);
        assert_eq!(failed.github_updated_at, None);
        assert_eq!(pending.state, SecretState::Present);
        assert_eq!(
            pending.github_updated_at.as_deref(),
            Some("2024-03-01T00:00:00Z")
        );
        assert_eq!(pending.recorded_us, 99);
    }
}

/// SQLite paces in process; these queries are PostgreSQL's.
#[tokio::test]
async fn a_pacing_row_starts_at_zero_keeps_the_last_write_and_is_held_by_one_writer() {
    let test_db = TestDatabase::postgres(&[SERVICE]).await;
    let db = migrated(&test_db).await;
    assert_eq!(db.dialect(), Dialect::Postgres);
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(lock_pacing(&mut tx, 7).await.unwrap(), 0);
    record_pacing(&mut tx, 7, 1_234).await.unwrap();
    tx.commit().await.unwrap();

    let mut first = db.pool().begin().await.unwrap();
    assert_eq!(lock_pacing(&mut first, 7).await.unwrap(), 1_234);
    // Another writer (another replica) waits for the row until the first one is done.
    let other = db.clone();
    let second = tokio::spawn(async move {
        let mut tx = other.pool().begin().await.unwrap();
        lock_pacing(&mut tx, 7).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the row lock was not held");
    record_pacing(&mut first, 7, 5_678).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), 5_678);
    // Installations are paced apart.
    let mut tx = db.pool().begin().await.unwrap();
    assert_eq!(lock_pacing(&mut tx, 8).await.unwrap(), 0);
}

#[tokio::test]
async fn a_server_is_bound_to_the_first_project_it_hands_over_for() {
    for (_t, db) in databases().await {
        assert_eq!(server_project(db.pool(), "srv-a").await.unwrap(), None);
        let bound = bind_server(&mut *conn(&db).await, "srv-a", &project("p1"), 10)
            .await
            .unwrap();
        assert_eq!(bound, "p1");
        // Never rebound: another project finds it taken.
        let bound = bind_server(&mut *conn(&db).await, "srv-a", &project("p2"), 20)
            .await
            .unwrap();
        assert_eq!(bound, "p1");
        assert_eq!(
            server_project(db.pool(), "srv-a").await.unwrap().as_deref(),
            Some("p1")
        );
        // A project may have several servers.
        let bound = bind_server(&mut *conn(&db).await, "srv-b", &project("p1"), 30)
            .await
            .unwrap();
        assert_eq!(bound, "p1");
    }
}

/// The settle pass's queries: only pending rows older than the cutoff are stale; a claim holds
/// only while the row is pending; a lost row becomes failed with its message, a present one
/// is never touched.
#[tokio::test]
async fn stale_pending_rows_are_claimed_once_and_settled_only_while_pending() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        let p1 = project("p1");
        for (secret, at) in [("OLD", 1_000), ("NEW", 9_000)] {
            record_pending(
                &mut *conn(&db).await,
                &p1,
                REPO,
                &name(secret),
                "api",
                false,
                at,
            )
            .await
            .unwrap();
        }
        let stale = stale_pending(db.pool(), 5_000).await.unwrap();
        assert_eq!(
            stale,
            vec![("p1".to_owned(), REPO.to_owned(), "OLD".to_owned())]
        );
        let dialect = db.dialect();
        let mut tx = conn(&db).await;
        assert!(
            claim_pending(&mut tx, dialect, &p1, REPO, "OLD")
                .await
                .unwrap()
        );
        lose_pending(&mut tx, &p1, REPO, "OLD", "lost [LOST_IN_CRASH]")
            .await
            .unwrap();
        assert!(
            !claim_pending(&mut tx, dialect, &p1, REPO, "OLD")
                .await
                .unwrap()
        );
        drop(tx);
        assert_eq!(
            state_of(&db, "p1", "OLD").await,
            (SecretState::Failed, Some("lost [LOST_IN_CRASH]".to_owned()))
        );
        assert!(stale_pending(db.pool(), 5_000).await.unwrap().is_empty());
        assert_eq!(state_of(&db, "p1", "NEW").await.0, SecretState::Pending);
    }
}

#[tokio::test]
async fn one_name_lives_in_several_locations_and_an_organization_secret_has_one_owner() {
    for (_t, db) in databases().await {
        register(&db, "p1", "app1").await;
        register(&db, "p2", "app2").await;
        let (p1, p2) = (project("p1"), project("p2"));
        let mut c = conn(&db).await;
        for place in [REPO, "environment:production", "dependabot", "organization"] {
            record_pending(
                &mut c,
                &p1,
                place,
                &name("TOKEN"),
                "spiffe://t/api",
                false,
                1,
            )
            .await
            .unwrap();
            let listed = all_secret_refs(db.pool(), &p1, place).await.unwrap();
            assert_eq!(listed.len(), 1, "{place}");
            assert_eq!(listed[0].location, place);
        }
        assert_eq!(
            organization_secret_owner(db.pool(), &name("TOKEN"))
                .await
                .unwrap()
                .as_deref(),
            Some("p1")
        );
        // The database itself refuses a second owner of an organization secret.
        let err = record_pending(
            &mut c,
            &p2,
            "organization",
            &name("TOKEN"),
            "spiffe://t/api",
            false,
            1,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, StoreError::Duplicate(_)), "{err:?}");
        // A delete in one location leaves the others.
        delete_secret_ref(&mut c, &p1, "dependabot", &name("TOKEN"))
            .await
            .unwrap();
        assert!(
            all_secret_refs(db.pool(), &p1, "dependabot")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            all_secret_refs(db.pool(), &p1, REPO).await.unwrap().len(),
            1
        );
    }
}
