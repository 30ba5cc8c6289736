//! The GitHub client of the secret broker: the only code that holds the GitHub App key.
//!
//! - [`AppAuth`]: RS256 JWTs (`iat` 60 s in the past, `exp` 9 minutes ahead).
//! - [`GitHub`]: installation lookup, installation tokens narrowed to repositories and
//!   permissions (cached until five minutes before expiry, replaced once when GitHub refuses a
//!   cached one with a 401, revoked by their holder with [`GitHub::revoke_token`]), Actions
//!   secrets (public key, list with `per_page=100`, get, put, delete), repositories and
//!   contents (a generated repository's first commit awaited: [`GitHub::wait_for_first_commit`]),
//!   retried as GitHub asks.
//! - [`seal`]: libsodium sealed boxes (crypto_box), so GitHub, and only GitHub, can read a value.

mod app;
mod client;
mod commits;
mod locations;
mod names;
mod tokens;

pub use app::{AppAuth, AppKeyError};
pub use client::{
    GitHub, GitHubError, InstallationToken, PublicKey, PutOutcome, Repository, RetryPolicy,
    SecretMeta,
};
pub use locations::{ENVIRONMENT_NAME_RULE, EnvironmentName, OrgVisibility, SecretsAt};
pub use names::{NameError, RepoRef, SecretName};

use base64::Engine as _;

/// Seals `plaintext` for the repository key `key` (X25519 sealed box, as libsodium's
/// `crypto_box_seal`), as the standard padded base64 GitHub expects.
pub fn seal(key: &PublicKey, plaintext: &[u8]) -> String {
    let recipient = crypto_box::PublicKey::from(key.key);
    let sealed = recipient
        .seal(&mut crypto_box::aead::OsRng, plaintext)
        .expect("sealing with a valid 32-byte key does not fail");
    base64::engine::general_purpose::STANDARD.encode(sealed)
}
