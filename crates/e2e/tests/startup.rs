//! A service refuses to start when its environment, certificate or policy is wrong, and says
//! precisely why without revealing any secret.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::TestMesh;

use orchestrator_mesh::Service;
use orchestrator_pki::Validity;

const CANARY: &str = "canary-L1-5d1f0c2e9b";

#[tokio::test]
async fn a_foreign_l1_secret_in_the_environment_stops_the_service() {
    let mesh = TestMesh::builder().start().await;
    let pki = mesh.pki();
    let secret_file = pki.dir().join("foreign-secret");
    std::fs::write(&secret_file, CANARY).unwrap();
    let cases = [
        (Service::Infra, "GITHUB_APP_PRIVATE_KEY", CANARY.to_owned()),
        (
            Service::Infra,
            "VAULT_MASTER_KEY_FILE",
            secret_file.display().to_string(),
        ),
        (Service::Vault, "DIGITALOCEAN_TOKEN", CANARY.to_owned()),
        (Service::SecretBroker, "VAULT_MASTER_KEY", CANARY.to_owned()),
        (
            Service::Scaffolder,
            "GITHUB_APP_PRIVATE_KEY_FILE",
            secret_file.display().to_string(),
        ),
        (
            Service::Scaffolder,
            "CLOUDFLARE_API_TOKEN",
            CANARY.to_owned(),
        ),
    ];
    for (service, var, value) in cases {
        let (code, output) = mesh
            .launch(service)
            .env(var, value)
            .run_to_exit()
            .await
            .unwrap();
        assert_ne!(code, Some(0), "{service} started with {var}");
        assert!(
            output.contains(var),
            "{service}: output does not name {var}:\n{output}"
        );
        assert!(
            !output.contains(CANARY),
            "{service}: output leaks the secret value:\n{output}"
        );
    }
}

#[tokio::test]
async fn its_own_l1_secret_is_fine() {
    let mesh = TestMesh::builder().start().await;
    let master = orchestrator_e2e::random_key();
    let mut vault = mesh
        .launch(Service::Vault)
        .without("VAULT_MASTER_KEY_FILE")
        .env("VAULT_MASTER_KEY", format!("k1:{master}"))
        .spawn()
        .await
        .unwrap();
    assert!(vault.is_running());
    assert!(!vault.logs().contains(&master));
}

#[tokio::test]
async fn another_services_certificate_stops_the_service() {
    let mesh = TestMesh::builder().start().await;
    let pki = mesh.pki();
    let (code, output) = mesh
        .launch(Service::Vault)
        .tls(&pki.files("infra"))
        .run_to_exit()
        .await
        .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        output.contains("proves spiffe://orchestrator.local/infra"),
        "{output}"
    );
    assert!(
        output.contains("this process is spiffe://orchestrator.local/vault"),
        "{output}"
    );
}

#[tokio::test]
async fn an_expired_own_certificate_stops_the_service() {
    let mesh = TestMesh::builder().start().await;
    let pki = mesh.pki();
    let files = pki
        .write(
            "vault-expired",
            &pki.issue("vault", Validity::expired()).unwrap(),
        )
        .unwrap();
    let (code, output) = mesh
        .launch(Service::Vault)
        .tls(&files)
        .run_to_exit()
        .await
        .unwrap();
    assert_ne!(code, Some(0));
    assert!(output.contains("not valid now"), "{output}");
}

#[tokio::test]
async fn a_policy_that_misses_an_rpc_or_names_an_unknown_one_stops_the_service() {
    let mesh = TestMesh::builder().start().await;
    let pki = mesh.pki();
    let full =
        std::fs::read_to_string(orchestrator_e2e::repo_root().join("config/policy.toml")).unwrap();

    let missing = full.replace("RotateDataKey = [\"operator\"]\n", "");
    assert_ne!(missing, full);
    let path = pki.dir().join("missing.toml");
    std::fs::write(&path, missing).unwrap();
    let (code, output) = mesh
        .launch(Service::Vault)
        .env("ORCH_POLICY_FILE", path.display().to_string())
        .run_to_exit()
        .await
        .unwrap();
    assert_ne!(code, Some(0));
    assert!(
        output.contains("orchestrator.vault.v1.VaultService/RotateDataKey"),
        "{output}"
    );

    let typo = full.replace(
        "RotateDataKey = [\"operator\"]",
        "RotateDataKey = [\"operator\"]\nRotateDatakey = [\"api\"]",
    );
    let path = pki.dir().join("typo.toml");
    std::fs::write(&path, typo).unwrap();
    let (code, output) = mesh
        .launch(Service::Infra)
        .env("ORCH_POLICY_FILE", path.display().to_string())
        .run_to_exit()
        .await
        .unwrap();
    assert_ne!(
        code,
        Some(0),
        "a typo in another service's section still stops every service"
    );
    assert!(output.contains("RotateDatakey"), "{output}");
}
