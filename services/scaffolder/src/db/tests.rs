//! The queries on both dialects: SQLite and PostgreSQL (a fresh database per test).

#![allow(clippy::unwrap_used)]

use orchestrator_store::testing::TestDatabase;

use super::*;
use crate::project::ProjectSpec;

/// A migrated database of each dialect (kept alive by the returned `TestDatabase`s).
async fn databases() -> Vec<(TestDatabase, Database)> {
    TestDatabase::both("scaffolder", |d| vec![migrations(d)]).await
}

fn new_project(n: u32, user: &str) -> Project {
    let secrets_ref = common::SecretsRef {
        entries: [
            (
                "bot_token".to_owned(),
                common::SecretTarget {
                    target: Some(common::secret_target::Target::GithubSecret(
                        common::GitHubSecretTarget {
                            name: "TELEGRAM_TOKEN".into(),
                            location: None,
                        },
                    )),
                },
            ),
            (
                "do_token".to_owned(),
                common::SecretTarget {
                    target: Some(common::secret_target::Target::VaultEntry(
                        common::VaultEntryRef {
                            user_id: user.into(),
                            key: "do".into(),
                            version: 3,
                        },
                    )),
                },
            ),
        ]
        .into(),
    };
    Project::recorded(
        ProjectSpec {
            request_id: RequestId::parse(&format!("req-{n}")).unwrap(),
            name: format!("Bot-{n}"),
            user_id: UserId::parse(user).unwrap(),
            template: Template::Ansible,
            description: "a bot".into(),
            visibility: Visibility::Internal,
            secrets_ref,
        },
        ProjectId::parse(&format!("prj-{n:016x}")).unwrap(),
        "acme".into(),
        1_000 + i64::from(n),
    )
}

async fn insert(db: &Database, project: &Project) -> Result<(), StoreError> {
    let mut conn = db.pool().acquire().await.unwrap();
    insert_project(&mut conn, project).await
}

#[tokio::test]
async fn a_recorded_project_reads_back_as_it_was_written() {
    for (_keep, db) in databases().await {
        let project = new_project(1, "u1");
        insert(&db, &project).await.unwrap();
        assert_eq!(
            project_by_id(&db, &project.id).await.unwrap().as_ref(),
            Some(&project)
        );
        assert_eq!(
            project_by_request_id(&db, &project.spec.request_id)
                .await
                .unwrap()
                .as_ref(),
            Some(&project)
        );
        let unknown = ProjectId::parse("prj-unknown").unwrap();
        assert_eq!(project_by_id(&db, &unknown).await.unwrap(), None);
    }
}

#[tokio::test]
async fn names_are_unique_in_any_case_and_request_ids_once() {
    for (_keep, db) in databases().await {
        insert(&db, &new_project(1, "u1")).await.unwrap();
        let mut same_name = new_project(2, "u1");
        same_name.spec.name = "bot-1".into();
        assert!(matches!(
            insert(&db, &same_name).await,
            Err(StoreError::Duplicate(_))
        ));
        let mut same_request = new_project(3, "u1");
        same_request.spec.request_id = RequestId::parse("req-1").unwrap();
        assert!(matches!(
            insert(&db, &same_request).await,
            Err(StoreError::Duplicate(_))
        ));
    }
}

#[tokio::test]
async fn steps_failures_and_readiness_are_recorded_as_the_model_applies_them() {
    for (_keep, db) in databases().await {
        let mut project = new_project(1, "u1");
        insert(&db, &project).await.unwrap();
        let mut conn = db.pool().acquire().await.unwrap();

        record_step(
            &mut conn,
            &project.id,
            Step::RepositoryCreated,
            Some(77),
            2_000,
        )
        .await
        .unwrap();
        project.advance(Step::RepositoryCreated, Some(77), 2_000);
        let failure = Failure {
            code: tonic::Code::Unavailable as i32,
            reason: "SECRET_BROKER_UNAVAILABLE".into(),
            message: "the secret broker is unavailable".into(),
        };
        record_failure(&mut conn, &project.id, &failure, 2_500)
            .await
            .unwrap();
        let stored = project_by_id(&db, &project.id).await.unwrap().unwrap();
        assert_eq!(stored.failure, Some(failure));
        assert_eq!(stored.step, Step::RepositoryCreated);
        assert_eq!(stored.updated_us, 2_500);

        // A later step keeps the repository id, clears the failure; done makes it ready.
        record_step(&mut conn, &project.id, Step::TemplateCommitted, None, 3_000)
            .await
            .unwrap();
        project.advance(Step::TemplateCommitted, None, 3_000);
        assert_eq!(
            project_by_id(&db, &project.id).await.unwrap().unwrap(),
            project
        );
        assert_eq!(project.repository_id, Some(77));
        assert_eq!(project.state, State::Creating);
        record_step(&mut conn, &project.id, Step::Done, None, 4_000)
            .await
            .unwrap();
        project.advance(Step::Done, None, 4_000);
        let stored = project_by_id(&db, &project.id).await.unwrap().unwrap();
        assert_eq!(stored, project);
        assert_eq!(stored.state, State::Ready);
        assert_eq!(stored.ready_us, Some(4_000));
    }
}

#[tokio::test]
async fn lists_filter_by_user_and_state_and_page_by_id() {
    for (_keep, db) in databases().await {
        for n in 1..=5 {
            let project = new_project(n, if n % 2 == 0 { "u2" } else { "u1" });
            insert(&db, &project).await.unwrap();
            if n == 5 {
                let mut conn = db.pool().acquire().await.unwrap();
                record_step(&mut conn, &project.id, Step::Done, None, 9_000)
                    .await
                    .unwrap();
            }
        }
        let ids = |projects: Vec<Project>| -> Vec<String> {
            projects.into_iter().map(|p| p.id.to_string()).collect()
        };
        let all = ProjectFilter::default();
        let first = list_projects(&db, &all, None, 3).await.unwrap();
        assert_eq!(
            ids(first),
            [
                "prj-0000000000000001",
                "prj-0000000000000002",
                "prj-0000000000000003"
            ]
        );
        let rest = list_projects(&db, &all, Some("prj-0000000000000003"), 3)
            .await
            .unwrap();
        assert_eq!(ids(rest), ["prj-0000000000000004", "prj-0000000000000005"]);

        let u1 = ProjectFilter {
            user_id: "u1".into(),
            state: None,
        };
        assert_eq!(
            ids(list_projects(&db, &u1, None, 10).await.unwrap()),
            [
                "prj-0000000000000001",
                "prj-0000000000000003",
                "prj-0000000000000005"
            ]
        );
        let ready = ProjectFilter {
            user_id: "u1".into(),
            state: Some(State::Ready),
        };
        assert_eq!(
            ids(list_projects(&db, &ready, None, 10).await.unwrap()),
            ["prj-0000000000000005"]
        );
        let failed = ProjectFilter {
            user_id: String::new(),
            state: Some(State::Failed),
        };
        assert!(
            list_projects(&db, &failed, None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_stored_value_this_version_does_not_know_is_an_error_not_another_value() {
    for (_keep, db) in databases().await {
        let project = new_project(1, "u1");
        insert(&db, &project).await.unwrap();
        for (column, value) in [
            ("template", "helm"),
            ("step", "rolled_back"),
            ("secrets_ref", "["),
        ] {
            let mut broken = new_project(2, "u2");
            broken.id = ProjectId::parse(&format!("prj-broken-{column}")).unwrap();
            broken.spec.request_id = RequestId::parse(&format!("req-broken-{column}")).unwrap();
            broken.spec.name = format!("broken-{column}");
            insert(&db, &broken).await.unwrap();
            // As a foreign writer (or a newer version) would leave it.
            let sql = match column {
                "template" => "UPDATE projects SET template = $2 WHERE id = $1",
                "step" => "UPDATE projects SET step = $2 WHERE id = $1",
                _ => "UPDATE projects SET secrets_ref = $2 WHERE id = $1",
            };
            sqlx::query(sql)
                .bind(broken.id.as_str())
                .bind(value)
                .execute(db.pool())
                .await
                .unwrap();
            let error = project_by_id(&db, &broken.id).await.unwrap_err();
            assert!(
                matches!(&error, StoreError::Other(m) if m.contains(column)),
                "{error}"
            );
            // The error answers INTERNAL without detail.
            assert_eq!(tonic::Status::from(&error).code(), tonic::Code::Internal);
        }
        // The sound row still reads.
        assert!(project_by_id(&db, &project.id).await.unwrap().is_some());
    }
}
