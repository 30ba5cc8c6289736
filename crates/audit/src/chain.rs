//! Records and their MAC chain.

use base64::Engine as _;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The MAC of the (nonexistent) record before the first.
pub(crate) const GENESIS: [u8; 32] = [0; 32];

/// The service's own audit MAC key (`AUDIT_KEY`: base64 of 32 random bytes). Never stored in the
/// database, never logged.
pub struct AuditKey(hmac::Key);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("AUDIT_KEY must be base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)")]
    Format,
}

impl AuditKey {
    pub fn from_base64(secret: &SecretString) -> Result<Self, AuditKeyError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(secret.expose_secret().trim())
                .map_err(|_| AuditKeyError::Format)?,
        );
        if bytes.len() != 32 {
            return Err(AuditKeyError::Format);
        }
        Ok(Self::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    pub(crate) fn hmac_key(&self) -> &hmac::Key {
        &self.0
    }

    pub(crate) fn mac(&self, prev: &[u8], record: &Record) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"orchestrator-audit-v1");
        ctx.update(prev);
        ctx.update(&(record.seq as u64).to_be_bytes());
        ctx.update(&record.at_us.to_be_bytes());
        for field in [
            record.entry.caller.as_bytes(),
            record.entry.method.as_bytes(),
            record.entry.target.as_bytes(),
            record.entry.outcome.as_bytes(),
            record.entry.request_id.as_bytes(),
            record.entry.detail.as_bytes(),
            record.entry.digest.as_deref().unwrap_or_default(),
        ] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Constant-time check of `mac` for `record` after `prev`.
    pub(crate) fn verify(&self, prev: &[u8], record: &Record, mac: &[u8]) -> bool {
        let expected = self.mac(prev, record);
        // Constant time: the position of the first differing byte must not leak.
        expected.len() == mac.len()
            && expected
                .iter()
                .zip(mac)
                .fold(0, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// What happened, as a caller of the audit log describes it. Never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The caller's SPIFFE ID.
    pub caller: String,
    /// The gRPC method (`/pkg.Service/Method`) or an internal job name.
    pub method: String,
    /// What it acted on, e.g. `users/u1/secrets/do-token/versions/3`.
    pub target: String,
    /// `OK`, or the gRPC code name of a failed attempt that is worth recording.
    pub outcome: String,
    /// The client's request id, if any.
    pub request_id: String,
    /// Non-secret context (`data_key=4`, `versions=1,2`).
    pub detail: String,
    /// A digest that binds the record to stored data (e.g. SHA-256 of a ciphertext), so a
    /// rolled-back row no longer matches its newest record.
    pub digest: Option<Vec<u8>>,
}

impl Entry {
    pub fn new(
        caller: impl Into<String>,
        method: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            caller: caller.into(),
            method: method.into(),
            target: target.into(),
            outcome: "OK".to_owned(),
            ..Self::default()
        }
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn digest(mut self, digest: impl Into<Vec<u8>>) -> Self {
        self.digest = Some(digest.into());
        self
    }
}

/// A stored record: an entry with its place and time in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: i64,
    pub at_us: i64,
    pub entry: Entry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_field_change_breaks_the_mac() {
        let key = AuditKey::from_bytes(&[7; 32]);
        let record = Record {
            seq: 5,
            at_us: 1,
            entry: Entry::new("spiffe://o/api", "/v.V/Put", "users/a/secrets/b")
                .detail("version=1"),
        };
        let mac = key.mac(&GENESIS, &record);
        assert!(key.verify(&GENESIS, &record, &mac));
        let mut other = record.clone();
        other.entry.target = "users/a/secrets/c".into();
        assert!(!key.verify(&GENESIS, &other, &mac));
        let mut other = record.clone();
        other.seq = 6;
        assert!(!key.verify(&GENESIS, &other, &mac));
        assert!(!key.verify(&[1; 32], &record, &mac));
        assert!(!AuditKey::from_bytes(&[8; 32]).verify(&GENESIS, &record, &mac));
        // Field boundaries are length-prefixed: moving bytes between fields changes the MAC.
        let mut shifted = record.clone();
        shifted.entry.caller = "spiffe://o/ap".into();
        shifted.entry.method = "i/v.V/Put".into();
        assert!(!key.verify(&GENESIS, &shifted, &mac));
    }

    #[test]
    fn the_key_is_32_base64_bytes_and_never_printed() {
        let good = SecretString::from("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_owned());
        let key = AuditKey::from_base64(&good).unwrap();
        assert_eq!(format!("{key:?}"), "AuditKey(..)");
        assert!(AuditKey::from_base64(&SecretString::from("c2hvcnQ=".to_owned())).is_err());
        assert!(AuditKey::from_base64(&SecretString::from("not base64!".to_owned())).is_err());
    }
}
