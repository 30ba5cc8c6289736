//! GitHub App authentication: RS256 JWTs signed with the App's private key.

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};

/// The App's identity: its id and private key. The key never leaves this type.
pub struct AppAuth {
    app_id: u64,
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppKeyError {
    #[error("GITHUB_APP_PRIVATE_KEY is not a PEM RSA private key (PKCS#1 or PKCS#8)")]
    Pem,
    #[error("GITHUB_APP_PRIVATE_KEY is not a usable RSA key ({0})")]
    Rsa(String),
}

impl AppAuth {
    pub fn from_pem(app_id: u64, pem: &SecretString) -> Result<Self, AppKeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem.expose_secret().as_bytes())
            .map_err(|_| AppKeyError::Pem)?;
        let key = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err(AppKeyError::Pem),
        }
        .map_err(|e| AppKeyError::Rsa(e.to_string()))?;
        Ok(Self {
            app_id,
            key,
            rng: SystemRandom::new(),
        })
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A JWT for App endpoints: issued 60 s in the past (clock skew, as GitHub advises),
    /// expiring 9 minutes from now (GitHub's limit is 10).
    pub fn jwt(&self, now_unix: i64) -> Result<SecretString, AppKeyError> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({ "iat": now_unix - 60, "exp": now_unix + 540, "iss": self.app_id.to_string() });
        let signing_input = format!("{header}.{}", b64.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|e| AppKeyError::Rsa(e.to_string()))?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            b64.encode(signature)
        )))
    }
}
