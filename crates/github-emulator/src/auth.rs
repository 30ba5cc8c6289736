//! Who is calling and what they may do: App JWTs (RS256 against the App's public key, GitHub's
//! claim rules and messages) and installation tokens (repositories and permissions checked on
//! every call).

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _, EncodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::model::{Grant, Level, World};

/// The App's public key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AppKeyError {
    #[error("no App public key was configured")]
    Missing,
    #[error("the App key PEM is neither PKCS#1 nor SPKI/PKCS#8 RSA: {0}")]
    Unparsable(String),
    #[error("the App key could not be re-encoded: {0}")]
    Encoding(String),
}

/// The App's RSA public key as PKCS#1 DER, for ring's verifier.
pub(crate) struct AppKey {
    pkcs1_der: Vec<u8>,
}

impl AppKey {
    pub(crate) fn from_pem(pem: &str) -> Result<Self, AppKeyError> {
        let pem = pem.trim();
        if pem.is_empty() {
            return Err(AppKeyError::Missing);
        }
        let public = if pem.contains("BEGIN RSA PUBLIC KEY") {
            rsa::RsaPublicKey::from_pkcs1_pem(pem)
                .map_err(|e| AppKeyError::Unparsable(e.to_string()))?
        } else if pem.contains("BEGIN PUBLIC KEY") {
            rsa::RsaPublicKey::from_public_key_pem(pem)
                .map_err(|e| AppKeyError::Unparsable(e.to_string()))?
        } else if pem.contains("BEGIN RSA PRIVATE KEY") {
            rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| AppKeyError::Unparsable(e.to_string()))?
                .to_public_key()
        } else if pem.contains("BEGIN PRIVATE KEY") {
            rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                .map_err(|e| AppKeyError::Unparsable(e.to_string()))?
                .to_public_key()
        } else {
            return Err(AppKeyError::Unparsable("no PEM block found".to_owned()));
        };
        let der = public
            .to_pkcs1_der()
            .map_err(|e| AppKeyError::Encoding(e.to_string()))?;
        Ok(Self {
            pkcs1_der: der.as_bytes().to_vec(),
        })
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &self.pkcs1_der,
        )
        .verify(message, signature)
        .is_ok()
    }
}

/// A private key PEM (PKCS#1 or PKCS#8) as PKCS#1 DER, for ring's signer (test helpers).
pub(crate) fn private_key_pkcs1_der(pem: &str) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        rsa::RsaPrivateKey::from_pkcs1_pem(pem)?
    } else {
        rsa::RsaPrivateKey::from_pkcs8_pem(pem)?
    };
    Ok(zeroize::Zeroizing::new(
        key.to_pkcs1_der()?.as_bytes().to_vec(),
    ))
}

/// The caller, as resolved from the `Authorization` header.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    Anonymous,
    /// A valid App JWT.
    App,
    Installation(Arc<Grant>),
}

pub(crate) const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";
const EXP_INVALID: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
const EXP_TOO_FAR: &str = "'Expiration time' claim ('exp') is too far in the future";
const IAT_INVALID: &str = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
const IAT_FUTURE: &str =
    "'Issued at' claim ('iat') must be an Integer representing a time in the past";
const ISS_INVALID: &str = "'Issuer' claim ('iss') must be an Integer";

/// Allowed clock skew for `iat`, and the longest JWT lifetime GitHub accepts.
const IAT_SKEW_S: i64 = 60;
const MAX_LIFETIME_S: i64 = 600;

/// The credential of an `Authorization: Bearer <c>` or `token <c>` header.
pub(crate) fn credential(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| credential.trim().to_owned())
}

/// Resolves the caller. `Bearer x.y.z` is a JWT; `Bearer t` and `token t` are installation
/// tokens. Errors are GitHub's 401s.
pub(crate) fn identify(
    headers: &HeaderMap,
    app_key: &AppKey,
    app_id: u64,
    world: &World,
) -> Result<Identity, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Identity::Anonymous);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_credentials())?
        .trim();
    let (scheme, credential) = value
        .split_once(' ')
        .map(|(s, c)| (s, c.trim()))
        .ok_or_else(ApiError::bad_credentials)?;
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    if !bearer && !scheme.eq_ignore_ascii_case("token") {
        return Err(ApiError::bad_credentials());
    }
    if bearer && credential.matches('.').count() == 2 {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        verify_jwt(app_key, app_id, credential, now)?;
        return Ok(Identity::App);
    }
    // A revoked token is no longer known: refused like any other.
    match world.tokens.get(credential) {
        Some(grant) if grant.expires_at > OffsetDateTime::now_utc() => {
            Ok(Identity::Installation(Arc::new(grant.clone())))
        }
        _ => Err(ApiError::bad_credentials()),
    }
}

/// GitHub's JWT rules: RS256 by the App's key, `iss` = the App id (number or numeric
/// string), `iat` at most 60 s ahead, `exp` in the future and at most 600 s after `iat`.
pub(crate) fn verify_jwt(key: &AppKey, app_id: u64, jwt: &str, now: i64) -> Result<(), ApiError> {
    let b64 = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let undecodable = || ApiError::jwt(JWT_UNDECODABLE);
    let mut parts = jwt.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(undecodable());
    };
    let header: Value = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(undecodable)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(undecodable());
    }
    let claims: Value = b64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(undecodable)?;
    let signature = b64.decode(s).map_err(|_| undecodable())?;

    // GitHub finds the App (and so the key) by `iss` before checking the signature.
    let iss = match claims.get("iss") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::jwt(ISS_INVALID))?;
    if iss != app_id {
        return Err(ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "Integration not found",
        ));
    }
    let signed = &jwt.as_bytes()[..h.len() + 1 + p.len()];
    if !key.verify(signed, &signature) {
        return Err(undecodable());
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::jwt(IAT_INVALID))?;
    if iat > now + IAT_SKEW_S {
        return Err(ApiError::jwt(IAT_FUTURE));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::jwt(EXP_INVALID))?;
    if exp <= now {
        return Err(ApiError::jwt(EXP_INVALID));
    }
    if exp - iat > MAX_LIFETIME_S {
        return Err(ApiError::jwt(EXP_TOO_FAR));
    }
    Ok(())
}

/// App-only endpoints: an installation token there is read as a (bad) JWT, as on GitHub.
pub(crate) fn require_app(identity: &Identity) -> Result<(), ApiError> {
    match identity {
        Identity::App => Ok(()),
        Identity::Installation(_) => Err(ApiError::jwt(JWT_UNDECODABLE)),
        Identity::Anonymous => Err(ApiError::requires_authentication()),
    }
}

/// Installation-token endpoints: the grant, or GitHub's refusal for other callers.
pub(crate) fn require_installation(identity: &Identity) -> Result<&Grant, ApiError> {
    match identity {
        Identity::Installation(grant) => Ok(grant),
        Identity::App => Err(ApiError::not_accessible()),
        Identity::Anonymous => Err(ApiError::requires_authentication()),
    }
}

/// Checks that `identity` may use `permission` at `level` on `owner/repo` and returns the
/// repository's key. Order: a repository outside the token's reach is 403, a missing one in
/// reach is 404, a missing permission is 403. Public repositories are readable by any token
/// (contents and metadata).
pub(crate) fn authorize_repo(
    identity: &Identity,
    world: &World,
    owner: &str,
    repo: &str,
    permission: &str,
    level: Level,
) -> Result<(String, String), ApiError> {
    let grant = require_installation(identity)?;
    let key = crate::model::repo_key(owner, repo);
    let found = world.repo(owner, repo);
    if let Some(r) = found
        && !r.private
        && level == Level::Read
        && matches!(permission, "contents" | "metadata")
    {
        return Ok(key);
    }
    match (&grant.repositories, found) {
        (Some(ids), Some(r)) if !ids.contains(&r.id) => return Err(ApiError::not_accessible()),
        (Some(_), None) => return Err(ApiError::not_accessible()),
        (None, _) if key.0 != grant.account => return Err(ApiError::not_accessible()),
        (None, None) => return Err(ApiError::not_found()),
        _ => {}
    }
    require_permission(grant, permission, level)?;
    Ok(key)
}

pub(crate) fn require_permission(
    grant: &Grant,
    permission: &str,
    level: Level,
) -> Result<(), ApiError> {
    // Every token can read metadata.
    if permission == "metadata" && level == Level::Read {
        return Ok(());
    }
    match grant.permissions.get(permission) {
        Some(have) if *have >= level => Ok(()),
        _ => Err(ApiError::not_accessible()),
    }
}
