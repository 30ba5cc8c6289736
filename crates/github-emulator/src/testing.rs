//! What the tests that talk to an emulator share: one GitHub App (its id and its key pair,
//! generated once per test process because RSA key generation is slow) and the organization
//! it is installed on.

use std::sync::OnceLock;

use crate::Config;

/// The id of the tests' GitHub App.
pub const APP_ID: u64 = 4242;

/// The organization the tests' App is installed on.
pub const ORG: &str = "acme";

/// The tests' App key pair (private key PKCS#1 PEM, public key SPKI PEM), generated once per
/// process.
pub fn app_key() -> &'static (String, String) {
    static KEY: OnceLock<(String, String)> = OnceLock::new();
    KEY.get_or_init(crate::generate_app_key)
}

/// `config` trusting the tests' App: [`APP_ID`] with the public half of [`app_key`].
pub fn trusting_test_app(config: Config) -> Config {
    Config {
        app_id: APP_ID,
        app_public_key_pem: app_key().1.clone(),
        ..config
    }
}
