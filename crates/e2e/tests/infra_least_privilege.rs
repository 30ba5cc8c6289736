//! Infra's reach, end to end with real processes (issue 11): DNS names infra did not create are
//! never taken over, refused before anything is bought, and never deleted; the droplets it
//! makes keep the injected host key away from containers and local users (the metadata
//! service is firewalled before the key is used).

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::time::Duration;

use orchestrator_e2e::{CF_TOKEN, ORG, ProviderSetup, TestMesh, raw, violated_fields};
use orchestrator_github_emulator::Config as GhConfig;
use orchestrator_mesh::Service;
use orchestrator_proto::infra::v1 as pb;
use orchestrator_proto::infra::v1::infra_service_client::InfraServiceClient;
use orchestrator_provider_emulators::DnsRecordView;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const INFRA: Service = Service::Infra;

/// The broker and infra on PostgreSQL against the emulators; project p1's repository app1
/// registered at the broker.
async fn start(setup: ProviderSetup) -> TestMesh {
    let mesh = TestMesh::builder()
        .postgres()
        .github(GhConfig::default())
        .providers(setup)
        .env(INFRA, "INFRA_READY_TIMEOUT_SECS", "60")
        .service(Service::SecretBroker)
        .service(INFRA)
        .start()
        .await;
    mesh.register_repository("p1", "app1").await;
    mesh
}

fn provision(request_id: &str, hostname: &str) -> pb::ProvisionServerRequest {
    orchestrator_e2e::droplet_provision(request_id, "p1", hostname)
}

/// A record made at Cloudflare by someone else (the zone's owner, with the same account's
/// token: what makes a record foreign is that infra did not create it, not who holds the
/// token). Returns its id.
async fn hand_made(mesh: &TestMesh, type_: &str, name: &str, content: &str) -> String {
    let zone = mesh.cloudflare().zone_id("orchestrator.test").unwrap();
    let body = json!({"type": type_, "name": name, "content": content, "ttl": 300});
    let (status, answer) = raw::http(
        mesh.cloudflare().url().trim_start_matches("http://"),
        "POST",
        &format!("/client/v4/zones/{zone}/dns_records"),
        Some(CF_TOKEN),
        &body.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    answer["result"]["id"].as_str().unwrap().to_owned()
}

fn record(mesh: &TestMesh, id: &str) -> Option<DnsRecordView> {
    mesh.cloudflare().records().into_iter().find(|r| r.id == id)
}

/// Watches an operation to its end; the last snapshot.
async fn finished(api: &mut InfraServiceClient<Channel>, id: &str) -> pb::Operation {
    let seen = orchestrator_e2e::watch_operation(api, id, Duration::from_secs(60)).await;
    seen.into_iter().last().unwrap()
}

async fn servers(api: &mut InfraServiceClient<Channel>) -> Vec<pb::Server> {
    api.list_servers(pb::ListServersRequest {
        show_destroyed: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .servers
}

async fn destroyed(api: &mut InfraServiceClient<Channel>, server_id: &str) -> pb::Operation {
    let op = api
        .destroy_server(pb::DestroyServerRequest {
            server_id: server_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    finished(api, &op.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_someone_elses_record_holds_is_refused_before_anything_is_bought() {
    let mesh = start(ProviderSetup::default()).await;
    let mut api = mesh.infra_as("api").await;
    let foreign = hand_made(&mesh, "A", "shop.orchestrator.test", "192.0.2.1").await;
    let verification = hand_made(&mesh, "TXT", "blog.orchestrator.test", "site-verify=1").await;
    let before = mesh.cloudflare().records();

    // Any record type infra did not create holds its name: refused at once, nothing recorded,
    // nothing bought, no deploy credential written, the record untouched.
    for (request_id, hostname, id) in [
        ("taken-a", "shop.orchestrator.test", &foreign),
        ("taken-txt", "blog.orchestrator.test", &verification),
    ] {
        let refused = api
            .provision_server(provision(request_id, hostname))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let info = refused.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "HOSTNAME_TAKEN_IN_DNS");
        assert!(refused.message().contains(id.as_str()), "{refused:?}");
    }
    assert!(
        mesh.digitalocean().droplets().is_empty(),
        "a droplet was bought"
    );
    assert!(servers(&mut api).await.is_empty(), "a server was recorded");
    assert!(mesh.github().secret(ORG, "app1", "DEPLOY_HOST").is_none());
    assert_eq!(mesh.cloudflare().records(), before);

    // The zone apex and reserved names are no server's, whatever the zone holds.
    for hostname in [
        "orchestrator.test",
        "www.orchestrator.test",
        "mail.orchestrator.test",
    ] {
        let refused = api
            .provision_server(provision(&format!("r-{hostname}"), hostname))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{hostname}");
        assert_eq!(violated_fields(&refused), ["hostname"], "{hostname}");
    }
    assert!(mesh.digitalocean().droplets().is_empty());
    assert_eq!(mesh.cloudflare().records(), before);

    // A record that appears after the request was accepted (a race): the operation refuses
    // the name before writing it; the record stays as its owner made it.
    let op = api
        .provision_server(provision("race-1", "race.orchestrator.test"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let late = hand_made(&mesh, "A", "race.orchestrator.test", "192.0.2.7").await;
    let failed = finished(&mut api, &op.id).await;
    assert_eq!(
        failed.state,
        pb::OperationState::Failed as i32,
        "{failed:?}"
    );
    let error = failed.error.unwrap();
    assert_eq!(error.reason, "HOSTNAME_TAKEN_IN_DNS", "{error:?}");
    assert_eq!(error.code, Code::FailedPrecondition as i32);
    let kept = record(&mesh, &late).unwrap();
    assert_eq!(
        (kept.content.as_str(), kept.comment.as_deref()),
        ("192.0.2.7", None)
    );
    // Destroying that server removes what it bought and leaves the record alone.
    let done = destroyed(&mut api, &op.server_id).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    assert!(mesh.digitalocean().live_droplets().is_empty());
    assert_eq!(record(&mesh, &late).unwrap(), kept);
    assert_eq!(mesh.cloudflare().records().len(), before.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infra_marks_its_record_and_destroy_deletes_that_one_only() {
    // Cloudflare's real rule (the emulator's too): several A records may share a name.
    let mesh = start(ProviderSetup::default()).await;
    let mut api = mesh.infra_as("api").await;
    let op = api
        .provision_server(provision("own-1", "app1.orchestrator.test"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let done = finished(&mut api, &op.id).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    let ours = mesh.cloudflare().records();
    assert_eq!(ours.len(), 1);
    let ip = mesh.digitalocean().live_droplets()[0].ipv4.clone().unwrap();
    assert_eq!(ours[0].content, ip);
    assert_eq!(
        ours[0].comment.as_deref(),
        Some(format!("orchestrator server {}", op.server_id).as_str()),
        "the record names the server it is for"
    );
    // Its id is what infra recorded.
    let stored = mesh
        .dba_dumps(
            INFRA,
            &format!(
                "SELECT dns_record_id AS dump FROM infra.servers WHERE id = '{}'",
                op.server_id
            ),
        )
        .await;
    assert_eq!(stored, [ours[0].id.clone()]);

    // Someone adds their own A record (and a TXT) at the same name; destroy removes infra's
    // record by its id and nothing else.
    let theirs = hand_made(&mesh, "A", "app1.orchestrator.test", "192.0.2.9").await;
    let txt = hand_made(&mesh, "TXT", "app1.orchestrator.test", "keep me").await;
    let done = destroyed(&mut api, &op.server_id).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    let left = mesh.cloudflare().records();
    let ids: Vec<&str> = left.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [theirs.as_str(), txt.as_str()]);
    assert_eq!(record(&mesh, &theirs).unwrap().content, "192.0.2.9");
    // Now their record holds the name: a new server may not take it.
    let refused = api
        .provision_server(provision("own-2", "app1.orchestrator.test"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "HOSTNAME_TAKEN_IN_DNS"
    );
    assert_eq!(mesh.digitalocean().droplets().len(), 1, "no second droplet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_droplet_fences_off_the_metadata_service_before_its_host_key_is_installed() {
    let mesh = start(ProviderSetup::default()).await;
    let mut api = mesh.infra_as("api").await;
    let op = api
        .provision_server(provision("meta-1", "app1.orchestrator.test"))
        .await
        .unwrap()
        .into_inner()
        .operation
        .unwrap();
    let done = finished(&mut api, &op.id).await;
    assert_eq!(done.state, pb::OperationState::Succeeded as i32, "{done:?}");
    let droplet = mesh.digitalocean().live_droplets().remove(0);
    // The user data holds the host private key (the metadata service serves it to whoever
    // asks from inside the server) ...
    let user_data = droplet.user_data.unwrap();
    assert!(user_data.contains("OPENSSH PRIVATE KEY"));
    // ... so the emulated server's cloud-init ran the firewall first: containers (DOCKER-USER)
    // and local users other than root (OUTPUT, by owner) cannot reach 169.254.169.254 by the
    // time the accounts and the host key exist.
    let log = mesh.digitalocean().boot_log(droplet.id);
    let firewall = format!("bootcmd: {}", orchestrator_deploy_keys::metadata_firewall());
    assert_eq!(log.first(), Some(&firewall), "{log:#?}");
    for rule in [
        "-I DOCKER-USER 1 -d 169.254.169.254/32 -j DROP",
        "-I OUTPUT 1 -d 169.254.169.254/32 -m owner ! --uid-owner 0 -j REJECT",
        "iptables -w -N DOCKER-USER",
    ] {
        assert!(firewall.contains(rule), "{rule}");
    }
    let key_at = log
        .iter()
        .position(|l| l.starts_with("ssh: host key "))
        .unwrap();
    let users_at = log.iter().position(|l| l.starts_with("users: ")).unwrap();
    assert!(0 < users_at && users_at < key_at, "{log:#?}");
    // The key installed is the one DEPLOY_KNOWN_HOSTS pins.
    let known = String::from_utf8(
        mesh.github()
            .secret(ORG, "app1", "DEPLOY_KNOWN_HOSTS")
            .unwrap(),
    )
    .unwrap();
    let pinned = known.split_whitespace().nth(2).unwrap();
    assert!(log[key_at].contains(pinned), "{}", log[key_at]);
    // And cloud-init's copies of the user data go once it is applied.
    assert!(
        log.last()
            .unwrap()
            .starts_with("runcmd: rm -f /var/lib/cloud/instances/*/user-data.txt*"),
        "{log:#?}"
    );
}
