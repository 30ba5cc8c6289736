//! Every query, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used)]

use orchestrator_fields::{ProjectId, RequestId};
use orchestrator_store::testing::TestDatabase;
use tonic::{Code, Status};

use super::*;
use crate::model::{Step, StepState};

orchestrator_store::on_both_dialects!(
    "infra";
    servers_round_trip_and_their_columns_are_set_and_cleared,
    a_destroy_wins_over_a_provision_that_ends_meanwhile,
    live_servers_hold_their_hostname_and_time4vps_server,
    operations_record_progress_and_their_end,
    operations_are_found_by_request_server_and_state,
    one_replica_at_a_time_holds_an_operation_until_its_lease_runs_out,
    lists_page_newest_first_with_their_filters,
    unknown_stored_values_are_errors,
);

async fn open(test: &TestDatabase) -> Database {
    test.open("infra", [crate::migrations(test.dialect())])
        .await
}

fn new_server(hostname: &str, provider: Provider) -> NewServer {
    NewServer {
        project_id: ProjectId::parse("prj-1").unwrap(),
        provider,
        provider_server_id: (provider == Provider::Time4Vps).then(|| "101".to_owned()),
        hostname: hostname.to_owned(),
        region: "fra1".to_owned(),
        size: "s-1vcpu-1gb".to_owned(),
        image: "ubuntu-24-04-x64".to_owned(),
        deploy_user: "deploy".to_owned(),
        credentials: CredentialSource::UserVault {
            user_id: "u1".to_owned(),
            key: "do-token".to_owned(),
        },
        dns_credentials: CredentialSource::Platform {},
    }
}

fn new_operation(id: &str, server_id: &str, kind: OperationKind) -> NewOperation {
    NewOperation {
        id: id.to_owned(),
        request_id: Some(RequestId::parse(&format!("req-{id}")).unwrap()),
        kind,
        server_id: server_id.to_owned(),
        project_id: "prj-1".to_owned(),
        steps: Steps::pending(&[Step::ServerDeleted, Step::DnsRecordRemoved]),
    }
}

async fn read(db: &Database, id: &str) -> Server {
    server(db, id).await.unwrap().unwrap()
}

/// Records `hostname` as server `id` at `now`, provisioning under `op-<id>`.
async fn add_server(db: &Database, id: &str, hostname: &str, provider: Provider, now: i64) {
    let mut conn = db.pool().acquire().await.unwrap();
    let server = new_server(hostname, provider);
    insert_server(&mut conn, id, &format!("op-{id}"), &server, now)
        .await
        .unwrap();
}

async fn servers_round_trip_and_their_columns_are_set_and_cleared(test: TestDatabase) {
    let db = &open(&test).await;
    add_server(db, "srv-1", "app.example.test", Provider::DigitalOcean, 10).await;
    let server = read(db, "srv-1").await;
    assert_eq!(server.provider, Provider::DigitalOcean);
    assert_eq!(server.state, ServerState::Provisioning);
    assert_eq!(
        server.credentials,
        new_server("", Provider::DigitalOcean).credentials
    );
    assert_eq!(server.dns_credentials, CredentialSource::Platform {});
    assert_eq!(
        (server.operation_id.as_str(), server.created_us),
        ("op-srv-1", 10)
    );
    assert!(!server.started() && server.ipv4.is_none() && server.ready_us.is_none());
    assert!(super::server(db, "srv-2").await.unwrap().is_none());

    let mut conn = db.pool().acquire().await.unwrap();
    let columns = [
        Column::ProviderServerId,
        Column::ProviderTaskId,
        Column::Ipv4,
        Column::DnsRecordId,
        Column::DeployPublicKey,
        Column::HostPublicKey,
    ];
    for column in columns {
        set_server_column(&mut conn, "srv-1", column, Some(column.name()), 20)
            .await
            .unwrap();
    }
    let server = read(db, "srv-1").await;
    let set = [
        &server.provider_server_id,
        &server.provider_task_id,
        &server.ipv4,
        &server.dns_record_id,
        &server.deploy_public_key,
        &server.host_public_key,
    ];
    for (column, value) in columns.iter().zip(set) {
        assert_eq!(value.as_deref(), Some(column.name()));
    }
    assert!(server.started());
    assert_eq!(server.updated_us, 20);
    set_server_column(&mut conn, "srv-1", Column::Ipv4, None, 30)
        .await
        .unwrap();
    let server = read(db, "srv-1").await;
    assert_eq!((server.ipv4, server.updated_us), (None, 30));
}

async fn a_destroy_wins_over_a_provision_that_ends_meanwhile(test: TestDatabase) {
    let db = &open(&test).await;
    add_server(db, "srv-1", "a.example.test", Provider::DigitalOcean, 10).await;
    let mut conn = db.pool().acquire().await.unwrap();
    set_server_state(&mut conn, "srv-1", ServerState::Ready, 20)
        .await
        .unwrap();
    set_server_state(&mut conn, "srv-1", ServerState::Ready, 25)
        .await
        .unwrap();
    let ready = read(db, "srv-1").await;
    assert_eq!(
        (ready.state, ready.ready_us, ready.updated_us),
        (ServerState::Ready, Some(20), 25)
    );

    mark_destroying(&mut conn, "srv-1", 30).await.unwrap();
    set_server_state(&mut conn, "srv-1", ServerState::Failed, 40)
        .await
        .unwrap();
    let going = read(db, "srv-1").await;
    assert_eq!(
        (going.state, going.updated_us),
        (ServerState::Destroying, 30)
    );
    assert!(going.state.is_going());

    set_server_state(&mut conn, "srv-1", ServerState::Destroyed, 50)
        .await
        .unwrap();
    let gone = read(db, "srv-1").await;
    assert_eq!(
        (gone.state, gone.destroyed_us),
        (ServerState::Destroyed, Some(50))
    );
    assert_eq!(gone.ready_us, Some(20));
}

async fn live_servers_hold_their_hostname_and_time4vps_server(test: TestDatabase) {
    let db = &open(&test).await;
    add_server(db, "srv-1", "a.example.test", Provider::Time4Vps, 10).await;
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(
        live_server_named(&mut conn, "a.example.test")
            .await
            .unwrap()
            .as_deref(),
        Some("srv-1")
    );
    assert_eq!(
        live_server_named(&mut conn, "b.example.test")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        live_time4vps_server(&mut conn, "101")
            .await
            .unwrap()
            .as_deref(),
        Some("srv-1")
    );
    assert_eq!(live_time4vps_server(&mut conn, "102").await.unwrap(), None);
    // The database holds the rule too, whatever a replica checked before its insert.
    let twin = new_server("a.example.test", Provider::DigitalOcean);
    let again = insert_server(&mut conn, "srv-2", "op-x", &twin, 11)
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::Duplicate(_)), "{again:?}");
    // Destroyed, it holds neither any more.
    set_server_state(&mut conn, "srv-1", ServerState::Destroyed, 20)
        .await
        .unwrap();
    assert_eq!(
        live_server_named(&mut conn, "a.example.test")
            .await
            .unwrap(),
        None
    );
    assert_eq!(live_time4vps_server(&mut conn, "101").await.unwrap(), None);
}

async fn operations_record_progress_and_their_end(test: TestDatabase) {
    let db = &open(&test).await;
    let mut conn = db.pool().acquire().await.unwrap();
    insert_operation(
        &mut conn,
        &new_operation("op-1", "srv-1", OperationKind::Destroy),
        10,
    )
    .await
    .unwrap();
    let accepted = operation(db, "op-1").await.unwrap().unwrap();
    assert_eq!(accepted.kind, OperationKind::Destroy);
    assert_eq!(accepted.state, OperationState::Pending);
    assert_eq!(accepted.message, "accepted");
    assert_eq!(accepted.request_id.as_deref(), Some("req-op-1"));
    assert_eq!(
        accepted.steps,
        Steps::pending(&[Step::ServerDeleted, Step::DnsRecordRemoved])
    );
    assert_eq!(
        (accepted.created_us, accepted.updated_us, accepted.ended_us),
        (10, 10, None)
    );

    let mut steps = operation_steps(&mut conn, "op-1").await.unwrap();
    steps.mark(Step::ServerDeleted, StepState::Done, "deleted", 20);
    record_progress(&mut conn, "op-1", &steps, "deleted", 20)
        .await
        .unwrap();
    let running = operation(db, "op-1").await.unwrap().unwrap();
    assert_eq!(
        (running.state, running.message.as_str()),
        (OperationState::Running, "deleted")
    );
    assert_eq!(running.steps, steps);
    let step = &running.to_pb().steps[0];
    assert_eq!(
        (step.state, step.detail.as_str()),
        (StepState::Done as i32, "deleted")
    );
    assert!(step.start_time.is_some() && step.end_time.is_some());

    let failure = Failure::of(&orchestrator_status::with_reason(
        Code::NotFound,
        "PROVIDER_NOT_FOUND",
        "no such server",
        &[("server", "101".to_owned())],
    ));
    end_operation(
        &mut conn,
        "op-1",
        OperationState::Failed,
        Some(&failure),
        30,
    )
    .await
    .unwrap();
    let failed = operation(db, "op-1").await.unwrap().unwrap();
    assert_eq!(
        (failed.state, failed.ended_us),
        (OperationState::Failed, Some(30))
    );
    assert_eq!(failed.error.as_ref(), Some(&failure));
    let error = failed.to_pb().error.unwrap();
    assert_eq!(
        (error.code, error.reason.as_str()),
        (Code::NotFound as i32, "PROVIDER_NOT_FOUND")
    );
    assert_eq!(error.metadata["server"], "101");

    end_operation(&mut conn, "op-1", OperationState::Succeeded, None, 40)
        .await
        .unwrap();
    let succeeded = operation(db, "op-1").await.unwrap().unwrap();
    assert_eq!(
        (succeeded.state, succeeded.error),
        (OperationState::Succeeded, None)
    );
}

async fn operations_are_found_by_request_server_and_state(test: TestDatabase) {
    let db = &open(&test).await;
    let mut conn = db.pool().acquire().await.unwrap();
    for (id, kind, now) in [
        ("op-1", OperationKind::Provision, 10),
        ("op-2", OperationKind::Destroy, 20),
        ("op-3", OperationKind::Destroy, 30),
    ] {
        insert_operation(&mut conn, &new_operation(id, "srv-1", kind), now)
            .await
            .unwrap();
    }
    // A request id is accepted once.
    let mut again = new_operation("op-4", "srv-1", OperationKind::Rotate);
    again.request_id = Some(RequestId::parse("req-op-1").unwrap());
    let again = insert_operation(&mut conn, &again, 40).await.unwrap_err();
    assert!(matches!(again, StoreError::Duplicate(_)), "{again:?}");
    let by_request = operation_by_request(db, "req-op-2").await.unwrap().unwrap();
    assert_eq!(by_request.id, "op-2");
    assert!(
        operation_by_request(db, "req-none")
            .await
            .unwrap()
            .is_none()
    );
    let newest = latest_operation(db, "srv-1", OperationKind::Destroy)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(newest.id, "op-3");
    assert!(
        latest_operation(db, "srv-1", OperationKind::Rotate)
            .await
            .unwrap()
            .is_none()
    );

    let mut unfinished = claimable_operations(db, 100).await.unwrap();
    unfinished.sort();
    assert_eq!(unfinished, ["op-1", "op-2", "op-3"]);
    end_operation(&mut conn, "op-1", OperationState::Succeeded, None, 50)
        .await
        .unwrap();
    end_operation(&mut conn, "op-2", OperationState::Succeeded, None, 50)
        .await
        .unwrap();
    assert_eq!(
        running_operation_on(&mut conn, "srv-1")
            .await
            .unwrap()
            .as_deref(),
        Some("op-3")
    );
    end_operation(&mut conn, "op-3", OperationState::Succeeded, None, 50)
        .await
        .unwrap();
    assert_eq!(
        running_operation_on(&mut conn, "srv-1").await.unwrap(),
        None
    );
    assert!(claimable_operations(db, 100).await.unwrap().is_empty());
    // An ended operation cannot be leased.
    assert!(!claim_lease(db, "op-3", "a", 100, 200).await.unwrap());
}

async fn one_replica_at_a_time_holds_an_operation_until_its_lease_runs_out(test: TestDatabase) {
    let db = &open(&test).await;
    add_server(db, "srv-1", "a.example.test", Provider::DigitalOcean, 10).await;
    let mut conn = db.pool().acquire().await.unwrap();
    insert_operation(
        &mut conn,
        &new_operation("op-1", "srv-1", OperationKind::Provision),
        10,
    )
    .await
    .unwrap();
    // Replica a takes it until 200; b is refused meanwhile, a renews.
    assert!(claim_lease(db, "op-1", "a", 100, 200).await.unwrap());
    assert!(!claim_lease(db, "op-1", "b", 150, 250).await.unwrap());
    assert!(claimable_operations(db, 150).await.unwrap().is_empty());
    assert!(claim_lease(db, "op-1", "a", 190, 300).await.unwrap());
    // a dies: once its lease ran out, b takes over, and a no longer holds it.
    assert_eq!(claimable_operations(db, 301).await.unwrap(), ["op-1"]);
    assert!(claim_lease(db, "op-1", "b", 301, 400).await.unwrap());
    assert!(!claim_lease(db, "op-1", "a", 310, 410).await.unwrap());
    // Released by a, nothing changes; released by b, anyone may take it at once.
    release_lease(db, "op-1", "a").await.unwrap();
    assert!(!claim_lease(db, "op-1", "c", 320, 420).await.unwrap());
    release_lease(db, "op-1", "b").await.unwrap();
    assert!(claim_lease(db, "op-1", "c", 320, 420).await.unwrap());
}

async fn lists_page_newest_first_with_their_filters(test: TestDatabase) {
    let db = &open(&test).await;
    // Two servers created in the same microsecond: the id breaks the tie.
    add_server(db, "srv-a", "a.example.test", Provider::DigitalOcean, 10).await;
    add_server(db, "srv-b", "b.example.test", Provider::DigitalOcean, 20).await;
    add_server(db, "srv-c", "c.example.test", Provider::DigitalOcean, 20).await;
    add_server(db, "srv-d", "d.example.test", Provider::Time4Vps, 30).await;
    let mut conn = db.pool().acquire().await.unwrap();
    set_server_state(&mut conn, "srv-a", ServerState::Destroyed, 40)
        .await
        .unwrap();
    let ids = |servers: Vec<Server>| servers.into_iter().map(|s| s.id).collect::<Vec<_>>();
    let all = ServerFilter::default();
    assert_eq!(
        ids(list_servers(db, &all, &After::start(), 10).await.unwrap()),
        ["srv-d", "srv-c", "srv-b"]
    );
    let after_c = After {
        created_us: 20,
        id: "srv-c".to_owned(),
    };
    assert_eq!(
        ids(list_servers(db, &all, &after_c, 10).await.unwrap()),
        ["srv-b"]
    );
    assert_eq!(
        ids(list_servers(db, &all, &After::start(), 2).await.unwrap()),
        ["srv-d", "srv-c"]
    );
    let with_destroyed = ServerFilter {
        show_destroyed: true,
        ..ServerFilter::default()
    };
    assert_eq!(
        ids(list_servers(db, &with_destroyed, &after_c, 10)
            .await
            .unwrap()),
        ["srv-b", "srv-a"]
    );
    let time4vps = ServerFilter {
        provider: Some(Provider::Time4Vps),
        ..ServerFilter::default()
    };
    assert_eq!(
        ids(list_servers(db, &time4vps, &After::start(), 10)
            .await
            .unwrap()),
        ["srv-d"]
    );
    let other_project = ServerFilter {
        project_id: "prj-2".to_owned(),
        ..ServerFilter::default()
    };
    assert!(
        list_servers(db, &other_project, &After::start(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let this_project = ServerFilter {
        project_id: "prj-1".to_owned(),
        ..ServerFilter::default()
    };
    assert_eq!(
        list_servers(db, &this_project, &After::start(), 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

async fn unknown_stored_values_are_errors(test: TestDatabase) {
    let db = &open(&test).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let mut odd = new_operation("op-1", "srv-1", OperationKind::Provision);
    odd.request_id = None;
    insert_operation(&mut conn, &odd, 10).await.unwrap();
    // What an older or a foreign writer could have left: a kind infra does not know.
    sqlx::query("UPDATE operations SET kind = 'upgrade' WHERE id = 'op-1'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let e = operation(db, "op-1").await.unwrap_err();
    assert!(matches!(e, StoreError::Other(_)), "{e:?}");
    assert_eq!(Status::from(e).code(), Code::Internal);

    add_server(db, "srv-1", "a.example.test", Provider::DigitalOcean, 10).await;
    sqlx::query("UPDATE servers SET state = 'lost' WHERE id = 'srv-1'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(server(db, "srv-1").await.is_err());
    sqlx::query("UPDATE servers SET state = 'ready', provider_credentials = '{\"other\":{}}'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert!(server(db, "srv-1").await.is_err());
}
