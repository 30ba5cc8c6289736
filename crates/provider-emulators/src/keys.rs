//! OpenSSH public keys as providers check them: `<type> <base64 blob> [comment]`, the blob's
//! first field naming the same type.

use base64::Engine as _;
use md5::Digest as _;

const TYPES: [&str; 6] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
];

/// A parsed public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    /// The wire blob: what identifies the key (comments do not).
    pub(crate) blob: Vec<u8>,
}

impl PublicKey {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let kind = parts.next()?;
        if !TYPES.contains(&kind) {
            return None;
        }
        let blob = base64::engine::general_purpose::STANDARD
            .decode(parts.next()?)
            .ok()?;
        let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
        let name = blob.get(4..4 + len)?;
        (name == kind.as_bytes() && blob.len() > 4 + len).then_some(Self { blob })
    }

    /// DigitalOcean's fingerprint: MD5 of the blob, colon-separated hex.
    pub(crate) fn md5_fingerprint(&self) -> String {
        let digest = md5::Md5::digest(&self.blob);
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_fingerprints() {
        // A syntactically valid ed25519 key (32 zero bytes).
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[0u8; 32]);
        let text = format!(
            "ssh-ed25519 {} me@host",
            base64::engine::general_purpose::STANDARD.encode(&blob)
        );
        let key = PublicKey::parse(&text).expect("valid key");
        assert_eq!(key.blob, blob);
        assert_eq!(key.md5_fingerprint().len(), 47);
        assert!(PublicKey::parse("ssh-rsa AAAA").is_none());
        assert!(PublicKey::parse(&text.replace("ssh-ed25519 ", "ssh-rsa ")).is_none());
        assert!(PublicKey::parse("hello").is_none());
    }
}
