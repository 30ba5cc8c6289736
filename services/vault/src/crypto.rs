//! Envelope encryption: master keys (L1, from `VAULT_MASTER_KEY`) wrap data keys (stored
//! wrapped in the database); data keys encrypt values with AES-256-GCM and random 96-bit nonces.
//!
//! Value ciphertext: `0x01 | data key id (u32 BE) | nonce (12) | ciphertext | tag (16)`, with
//! AAD binding it to its row (user id, key, version): copied anywhere else, it does not decrypt.

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The format byte of every value ciphertext this code writes.
const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyringError {
    #[error(
        "VAULT_MASTER_KEY must be a list of `id:base64` entries (32-byte keys), separated by commas \
         or whitespace; the first is the primary. Entry {0} is not."
    )]
    Format(usize),
    #[error("VAULT_MASTER_KEY names master key `{0}` twice")]
    Duplicate(String),
    #[error("VAULT_MASTER_KEY is empty")]
    Empty,
}

/// An AES-256-GCM key that never prints.
struct Key(LessSafeKey);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        UnboundKey::new(&AES_256_GCM, bytes)
            .ok()
            .map(|k| Self(LessSafeKey::new(k)))
    }

    fn seal(&self, rng: &SystemRandom, aad: &[u8], plaintext: &[u8], header: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).expect("the system RNG works");
        let mut out = Vec::with_capacity(header.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(header);
        out.extend_from_slice(&nonce);
        // Sealed where it lies: no copy of the plaintext is left behind.
        let body = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[body..],
            )
            .expect("AES-GCM sealing of a bounded value");
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn open(&self, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad), &mut buf[..])
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

/// The master keys, by id; the first one given is the primary (wraps new data keys).
#[derive(Debug)]
pub(crate) struct Keyring {
    keys: BTreeMap<String, (Key, [u8; 8])>,
    primary: String,
}

impl Keyring {
    /// Parses `id:base64,id:base64...`. Ids are `[A-Za-z0-9_-]{1,32}`.
    pub(crate) fn parse(secret: &SecretString) -> Result<Self, KeyringError> {
        let mut keys = BTreeMap::new();
        let mut primary = None;
        for (i, entry) in secret
            .expose_secret()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let (id, b64) = entry.split_once(':').ok_or(KeyringError::Format(i + 1))?;
            let valid_id = (1..=32).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let bytes = Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| KeyringError::Format(i + 1))?,
            );
            if !valid_id || bytes.len() != 32 {
                return Err(KeyringError::Format(i + 1));
            }
            let key = Key::from_bytes(&bytes).ok_or(KeyringError::Format(i + 1))?;
            let kcv = check_value(&bytes);
            if keys.insert(id.to_owned(), (key, kcv)).is_some() {
                return Err(KeyringError::Duplicate(id.to_owned()));
            }
            primary.get_or_insert_with(|| id.to_owned());
        }
        Ok(Self {
            keys,
            primary: primary.ok_or(KeyringError::Empty)?,
        })
    }

    pub(crate) fn primary_id(&self) -> &str {
        &self.primary
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The key check value of master key `id`, if the keyring holds it.
    pub(crate) fn check_value(&self, id: &str) -> Option<[u8; 8]> {
        self.keys.get(id).map(|(_, kcv)| *kcv)
    }

    /// A fresh data key wrapped by the primary master key: (key, wrapped, kcv of the master).
    pub(crate) fn new_data_key(
        &self,
        rng: &SystemRandom,
        data_key_id: i64,
    ) -> (DataKey, Vec<u8>, [u8; 8]) {
        let mut raw = Zeroizing::new([0u8; 32]);
        rng.fill(&mut raw[..]).expect("the system RNG works");
        let (master, kcv) = &self.keys[&self.primary];
        let wrapped = master.seal(rng, &wrap_aad(data_key_id), &raw[..], &[]);
        let key = DataKey {
            id: data_key_id,
            key: Key::from_bytes(&raw[..]).expect("32 bytes"),
        };
        (key, wrapped, *kcv)
    }

    /// Unwraps data key `data_key_id` with master key `master_id`.
    pub(crate) fn unwrap(
        &self,
        master_id: &str,
        data_key_id: i64,
        wrapped: &[u8],
    ) -> Option<DataKey> {
        let raw = self.unwrap_raw(master_id, data_key_id, wrapped)?;
        Some(DataKey {
            id: data_key_id,
            key: Key::from_bytes(&raw)?,
        })
    }

    /// Wraps raw data key bytes under the primary master key: (wrapped, kcv).
    pub(crate) fn wrap_raw(
        &self,
        rng: &SystemRandom,
        data_key_id: i64,
        raw: &[u8],
    ) -> (Vec<u8>, [u8; 8]) {
        let (master, kcv) = &self.keys[&self.primary];
        (master.seal(rng, &wrap_aad(data_key_id), raw, &[]), *kcv)
    }

    /// Unwraps and returns the raw bytes too, for re-wrapping under a new master key.
    pub(crate) fn unwrap_raw(
        &self,
        master_id: &str,
        data_key_id: i64,
        wrapped: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let (master, _) = self.keys.get(master_id)?;
        if wrapped.len() < NONCE_LEN {
            return None;
        }
        master.open(
            &wrap_aad(data_key_id),
            &wrapped[..NONCE_LEN],
            &wrapped[NONCE_LEN..],
        )
    }
}

/// A data key's wrapping is bound to its id: a wrapped key copied to another id fails.
// Architecture Invariant: no L3 value is stored unencrypted, and the keys that encrypt values
// are stored only wrapped by a master key that never reaches the database.
fn wrap_aad(data_key_id: i64) -> Vec<u8> {
    let mut aad = b"orchestrator.vault data-key ".to_vec();
    aad.extend_from_slice(&data_key_id.to_be_bytes());
    aad
}

/// Key check value of a master key: 8 bytes of HMAC-SHA256(key, label). Identifies the key
/// without revealing it, so a wrong key is named precisely at start-up.
fn check_value(master: &[u8]) -> [u8; 8] {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master),
        b"orchestrator.vault key check value",
    );
    let mut kcv = [0; 8];
    kcv.copy_from_slice(&tag.as_ref()[..8]);
    kcv
}

/// A data key, unwrapped in memory.
#[derive(Debug)]
pub(crate) struct DataKey {
    pub(crate) id: i64,
    key: Key,
}

/// Where a ciphertext belongs: bound into its AAD.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) key: &'a str,
    pub(crate) version: i64,
}

impl RowRef<'_> {
    // Architecture Invariant: ciphertexts are bound to their row (user id, key, version); one
    // copied to another row does not decrypt there.
    fn aad(&self) -> Vec<u8> {
        let mut aad = b"orchestrator.vault.v1 user_vault".to_vec();
        for field in [self.user_id.as_bytes(), self.key.as_bytes()] {
            aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
            aad.extend_from_slice(field);
        }
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad
    }
}

impl DataKey {
    pub(crate) fn encrypt(&self, rng: &SystemRandom, row: RowRef<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut header = [0u8; 5];
        header[0] = FORMAT_V1;
        header[1..5].copy_from_slice(&(self.id as u32).to_be_bytes());
        self.key.seal(rng, &row.aad(), plaintext, &header)
    }

    pub(crate) fn decrypt(&self, row: RowRef<'_>, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if ciphertext_key_id(ciphertext)? != self.id {
            return None;
        }
        self.key.open(
            &row.aad(),
            &ciphertext[5..HEADER_LEN],
            &ciphertext[HEADER_LEN..],
        )
    }
}

/// The data key id a ciphertext names, if it is a well-formed v1 ciphertext.
pub(crate) fn ciphertext_key_id(ciphertext: &[u8]) -> Option<i64> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN || ciphertext[0] != FORMAT_V1 {
        return None;
    }
    Some(i64::from(u32::from_be_bytes(
        ciphertext[1..5].try_into().ok()?,
    )))
}

/// SHA-256, for binding audit records to ciphertexts.
pub(crate) fn digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(entries: &str) -> Keyring {
        Keyring::parse(&SecretString::from(entries.to_owned())).unwrap()
    }

    const K1: &str = "k1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const K2: &str = "k2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    #[test]
    fn round_trip_and_row_binding() {
        let rng = SystemRandom::new();
        let (dk, _, _) = ring_of(K1).new_data_key(&rng, 1);
        let row = RowRef {
            user_id: "u1",
            key: "do",
            version: 2,
        };
        let ct = dk.encrypt(&rng, row, b"canary-value");
        assert_eq!(&dk.decrypt(row, &ct).unwrap()[..], b"canary-value");
        assert_eq!(ct[0], FORMAT_V1);
        assert_eq!(ciphertext_key_id(&ct), Some(1));
        for other in [
            RowRef {
                user_id: "u2",
                ..row
            },
            RowRef { key: "cf", ..row },
            RowRef { version: 1, ..row },
            RowRef {
                user_id: "u1d",
                key: "o",
                ..row
            },
        ] {
            assert!(dk.decrypt(other, &ct).is_none(), "{other:?}");
        }
        let mut tampered = ct.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(dk.decrypt(row, &tampered).is_none());
    }

    #[test]
    fn data_keys_unwrap_only_with_their_master_and_id() {
        let rng = SystemRandom::new();
        let one = ring_of(K1);
        let (_, wrapped, kcv) = one.new_data_key(&rng, 7);
        assert_eq!(one.check_value("k1"), Some(kcv));
        assert!(one.unwrap("k1", 7, &wrapped).is_some());
        assert!(one.unwrap("k1", 8, &wrapped).is_none());
        let two = ring_of(&format!("{K2},{K1}"));
        assert_eq!(two.primary_id(), "k2");
        assert!(two.unwrap("k1", 7, &wrapped).is_some());
        let wrong = ring_of("k1:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=");
        assert_ne!(wrong.check_value("k1"), Some(kcv));
        assert!(wrong.unwrap("k1", 7, &wrapped).is_none());
    }

    #[test]
    fn keyring_errors_never_show_key_material() {
        for bad in [
            "",
            "k1",
            "k1:c2hvcnQ=",
            "k 1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            &format!("{K1},{K1}"),
        ] {
            let err = Keyring::parse(&SecretString::from(bad.to_owned()))
                .unwrap_err()
                .to_string();
            assert!(!err.contains("AQEB"), "{err}");
        }
        assert!(!format!("{:?}", ring_of(K1)).contains("AQEB"));
    }

    mod props {
        //! Property tests of the ciphertext header and envelope: any bytes read from the
        //! database are refused without a panic unless they are what this code sealed for
        //! that row; sealing then opening gives the value back.
        use super::super::*;
        use super::{K1, K2, ring_of};
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                failure_persistence: None,
                // PROPTEST_CASES (the long run) wins over the short run.
                ..ProptestConfig::with_cases(
                    std::env::var("PROPTEST_CASES")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(128),
                )
            }
        }

        fn row() -> impl Strategy<Value = (String, String, i64)> {
            ("\\PC{0,12}", "[A-Za-z0-9_]{0,12}", any::<i64>())
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn prop_ciphertext_header_never_panics(
                bytes in prop_oneof![
                    vec(any::<u8>(), 0..80),
                    vec(any::<u8>(), 0..80).prop_map(|mut b| { if !b.is_empty() { b[0] = FORMAT_V1; } b }),
                ],
                (user_id, key, version) in row(),
            ) {
                let id = ciphertext_key_id(&bytes);
                prop_assert_eq!(id.is_some(), bytes.len() >= HEADER_LEN + TAG_LEN && bytes[0] == FORMAT_V1);
                let rng = SystemRandom::new();
                let (dk, _, _) = ring_of(K1).new_data_key(&rng, id.unwrap_or(1));
                let row = RowRef { user_id: &user_id, key: &key, version };
                prop_assert!(dk.decrypt(row, &bytes).is_none());
            }

            #[test]
            fn prop_seal_open_round_trip(
                plaintext in vec(any::<u8>(), 0..256),
                (user_id, key, version) in row(),
                data_key_id in 0..=i64::from(u32::MAX),
            ) {
                let rng = SystemRandom::new();
                let (dk, _, _) = ring_of(K1).new_data_key(&rng, data_key_id);
                let row = RowRef { user_id: &user_id, key: &key, version };
                let ct = dk.encrypt(&rng, row, &plaintext);
                prop_assert_eq!(ct.len(), HEADER_LEN + plaintext.len() + TAG_LEN);
                prop_assert_eq!(ciphertext_key_id(&ct), Some(data_key_id));
                let opened = dk.decrypt(row, &ct);
                prop_assert_eq!(opened.as_deref().map(|v| &v[..]), Some(&plaintext[..]));
            }

            #[test]
            fn prop_changed_ciphertexts_never_open(
                plaintext in vec(any::<u8>(), 0..64),
                at in any::<prop::sample::Index>(),
                xor in 1u8..,
                cut in any::<prop::sample::Index>(),
                extra in vec(any::<u8>(), 1..8),
            ) {
                let rng = SystemRandom::new();
                let (dk, _, _) = ring_of(K1).new_data_key(&rng, 3);
                let row = RowRef { user_id: "u1", key: "k", version: 1 };
                let ct = dk.encrypt(&rng, row, &plaintext);
                let mut flipped = ct.clone();
                flipped[at.index(ct.len())] ^= xor;
                prop_assert!(dk.decrypt(row, &flipped).is_none());
                prop_assert!(dk.decrypt(row, &ct[..cut.index(ct.len())]).is_none());
                let mut longer = ct.clone();
                longer.extend_from_slice(&extra);
                prop_assert!(dk.decrypt(row, &longer).is_none());
            }

            #[test]
            fn prop_wrapped_data_keys_never_panic(
                wrapped in vec(any::<u8>(), 0..96),
                at in any::<prop::sample::Index>(),
                id in any::<i64>(),
            ) {
                let rng = SystemRandom::new();
                let keyring = ring_of(&format!("{K1},{K2}"));
                prop_assert!(keyring.unwrap_raw("k1", id, &wrapped).is_none());
                prop_assert!(keyring.unwrap("k3", id, &wrapped).is_none());
                let (_, good, _) = keyring.new_data_key(&rng, id);
                prop_assert!(keyring.unwrap("k1", id, &good).is_some());
                let mut bad = good.clone();
                bad[at.index(good.len())] ^= 0x80;
                prop_assert!(keyring.unwrap("k1", id, &bad).is_none());
                prop_assert!(keyring.unwrap("k2", id, &good).is_none());
            }

            #[test]
            fn prop_master_key_setting_never_panics(
                text in prop_oneof![
                    any::<String>(),
                    "([a-zA-Z0-9_ -]{0,6}:[A-Za-z0-9+/=]{0,48}[, \n]?){0,3}",
                ],
            ) {
                match Keyring::parse(&SecretString::from(text.clone())) {
                    Ok(ring) => prop_assert!(ring.ids().any(|id| id == ring.primary_id())),
                    Err(e) => {
                        let shown = e.to_string();
                        // Names an entry or an id, never a key's base64.
                        for part in text.split(|c: char| c == ',' || c.is_whitespace()) {
                            if let Some((_, b64)) = part.split_once(':') {
                                prop_assert!(b64.len() < 8 || !shown.contains(b64), "{shown}");
                            }
                        }
                    }
                }
            }
        }
    }
}
