//! Certificate and CA rotation without a restart and without a failed RPC.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orchestrator_e2e::{Launch, Pki, TRUST_DOMAIN, identity, raw};
use orchestrator_mesh::Service;
use orchestrator_pki::{Ca, Validity};
use tonic::Code;

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
    let pki = Pki::new().unwrap();
    let mut vault = Launch::new(Service::Vault, &pki)
        .unwrap()
        .spawn()
        .await
        .unwrap();
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
    wait_for_certificate(&pki, &vault, &der(&renewed.cert_pem)).await;
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
    assert!(vault.is_running());
    assert!(vault.logs().contains("TLS certificate reloaded"));
}

#[tokio::test]
async fn a_new_ca_is_trusted_once_added_to_the_bundle_and_a_broken_file_is_ignored() {
    let pki = Pki::new().unwrap();
    // The vault's own copy of the bundle, so clients keep trusting the original CA file.
    let bundle = pki.dir().join("vault-ca.crt");
    std::fs::copy(pki.ca_file(), &bundle).unwrap();
    let mut vault = Launch::new(Service::Vault, &pki)
        .unwrap()
        .env("ORCH_TLS_CA", bundle.display().to_string())
        .spawn()
        .await
        .unwrap();
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
    let refused = match orchestrator_e2e::channel_with(client("next-api"), vault.grpc).await {
        Ok(ch) => raw::call(ch, "/grpc.health.v1.Health/Check").await,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(refused, Code::Ok);

    // A half-written CA file is reported and ignored: the vault keeps serving.
    std::fs::write(&bundle, "-----BEGIN CERTIFICATE-----\ngarbage").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = orchestrator_e2e::channel_with(client("api"), vault.grpc)
        .await
        .unwrap();
    assert_eq!(
        raw::call(old, "/grpc.health.v1.Health/Check").await,
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
        let code = match orchestrator_e2e::channel_with(client("next-api"), vault.grpc).await {
            Ok(ch) => raw::call(ch, "/grpc.health.v1.Health/Check").await,
            Err(_) => Code::Unavailable,
        };
        if code == Code::Ok {
            break;
        }
        assert!(Instant::now() < deadline, "the new CA was never trusted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = orchestrator_e2e::channel_with(client("api"), vault.grpc)
        .await
        .unwrap();
    assert_eq!(
        raw::call(old, "/grpc.health.v1.Health/Check").await,
        Code::Ok
    );
    assert!(vault.is_running());
}
