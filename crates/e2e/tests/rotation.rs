//! Certificate and CA rotation without a restart and without a failed RPC.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orchestrator_e2e::{Pki, TRUST_DOMAIN, TestMesh, identity, raw};
use orchestrator_mesh::Service;
use orchestrator_pki::{Ca, Validity};
use tonic::Code;

const VAULT: Service = Service::Vault;

async fn wait_for_certificate(pki: &Pki, vault: &orchestrator_e2e::Proc, expected: &[u8]) {
    let config = pki.client_config("api", &identity("vault")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = raw::server_certificate(vault.grpc, config.clone())
            .await
            .unwrap();
        if seen.as_ref() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the vault still presents its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_replaced_certificate_is_used_by_new_connections_with_no_failed_rpc() {
    let mut mesh = TestMesh::builder().service(VAULT).start().await;
    let (pki, vault) = (mesh.pki(), mesh.proc(VAULT));
    let api = pki.client("api").unwrap();

    // Callers keep calling, on one long-lived channel and on fresh connections, throughout.
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let long_lived = vault.channel(&api).await.unwrap();
    let mut callers = Vec::new();
    for fresh in [false, true] {
        let (ok, failed, stop, api, long_lived, addr) = (
            ok.clone(),
            failed.clone(),
            stop.clone(),
            api.clone(),
            long_lived.clone(),
            vault.grpc,
        );
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let channel = if fresh {
                    orchestrator_e2e::channel(&api, addr, "vault")
                        .await
                        .unwrap()
                } else {
                    long_lived.clone()
                };
                match raw::call(channel, "/grpc.health.v1.Health/Check").await {
                    Code::Ok => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    let renewed = pki.issue("vault", Validity::days(1)).unwrap();
    pki.write("vault", &renewed).unwrap();
    wait_for_certificate(pki, vault, &der(&renewed.cert_pem)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "too few calls to mean anything"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "RPCs failed during rotation"
    );
    assert!(mesh.proc_mut(VAULT).is_running());
    assert!(mesh.logs(VAULT).contains("TLS certificate reloaded"));
}

#[tokio::test]
async fn a_new_ca_is_trusted_once_added_to_the_bundle_and_a_broken_file_is_ignored() {
    let mut mesh = TestMesh::builder().start().await;
    // The vault's own copy of the bundle, so clients keep trusting the original CA file.
    let bundle = mesh.pki().dir().join("vault-ca.crt");
    std::fs::copy(mesh.pki().ca_file(), &bundle).unwrap();
    let launch = mesh
        .launch(VAULT)
        .env("ORCH_TLS_CA", bundle.display().to_string());
    mesh.spawn(launch).await;
    let (pki, vault) = (mesh.pki(), mesh.proc(VAULT));
    let next_ca = Ca::generate(TRUST_DOMAIN, Validity::days(2)).unwrap();
    pki.write(
        "next-api",
        &next_ca
            .issue(TRUST_DOMAIN, "api", Validity::days(1))
            .unwrap(),
    )
    .unwrap();
    let client = |stem: &str| pki.client_config(stem, &identity("vault")).unwrap();

    // Before: the new CA's certificate is refused.
    let refused = raw::health_check_with(client("next-api"), vault.grpc).await;
    assert_ne!(refused, Code::Ok);

    // A half-written CA file is reported and ignored: the vault keeps serving.
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        raw::health_check_with(client("api"), vault.grpc).await,
        Code::Ok
    );
    assert!(vault.logs().contains("cannot be used"), "{}", vault.logs());

    // Bundle old + new CA: both generations are trusted, without a restart.
    std::fs::write(
        &bundle,
        format!("{}{}", pki.ca().cert_pem(), next_ca.cert_pem()),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = raw::health_check_with(client("next-api"), vault.grpc).await;
        if code == Code::Ok {
            break;
        }
        assert!(Instant::now() < deadline, "the new CA was never trusted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        raw::health_check_with(client("api"), vault.grpc).await,
        Code::Ok
    );
    assert!(mesh.proc_mut(VAULT).is_running());
}
