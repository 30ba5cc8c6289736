//! Checkpoints: the chain's head anchored outside the database.
//!
//! The head lives in the same database as the records, so whoever owns that database can
//! remove the newest records and set the head back to an earlier record: the shorter chain
//! verifies. A checkpoint is the head as a running service saw it (sequence number and the
//! record's chain MAC), with the time, MACed with the service's `AUDIT_KEY` under its own
//! domain, so it cannot be forged from the database and one service's cannot pass for
//! another's. Services print one to their log at an interval and at shutdown; kept anywhere
//! the database's owner cannot rewrite (a log collector), it lets [`check`] prove that the
//! database is not behind it.

use std::sync::PoisonError;

use orchestrator_store::now_us;
use ring::hmac;
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

use crate::chain::AuditKey;
use crate::ledger::{AuditError, Ledger};

/// The head of one service's chain at one moment, MACed with its `AUDIT_KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The service's name (`vault`, ...), bound by the MAC.
    pub service: String,
    /// The newest record's sequence number (0: no record yet).
    pub seq: i64,
    /// That record's chain MAC (32 zero bytes for `seq` 0).
    pub head: Vec<u8>,
    /// When the checkpoint was taken (µs since the epoch).
    pub at_us: i64,
    /// HMAC-SHA256(AUDIT_KEY, domain || service || seq || head || at_us).
    pub mac: Vec<u8>,
}

/// Why a text holds no usable checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("no audit checkpoint of {0} in the input (a JSON object or a service's log lines)")]
    NoneFound(String),
    #[error("malformed audit checkpoint: {0}")]
    Malformed(String),
}

impl Checkpoint {
    /// A checkpoint of `service`'s head `(seq, head)` at `at_us`, MACed with `key`.
    pub fn sign(key: &AuditKey, service: &str, seq: i64, head: &[u8], at_us: i64) -> Self {
        Self {
            service: service.to_owned(),
            seq,
            head: head.to_vec(),
            at_us,
            mac: key.checkpoint_mac(service, seq, head, at_us).to_vec(),
        }
    }

    /// Whether the MAC is `key`'s over these fields (constant time).
    pub fn is_authentic(&self, key: &AuditKey) -> bool {
        let expected = key.checkpoint_mac(&self.service, self.seq, &self.head, self.at_us);
        expected.len() == self.mac.len()
            && expected
                .iter()
                .zip(&self.mac)
                .fold(0, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// One line of compact JSON (no spaces): `{"service":..,"seq":..,"head":hex,"at_us":..,"mac":hex}`.
    pub fn to_json(&self) -> String {
        json!({
            "service": self.service,
            "seq": self.seq,
            "head": hex(&self.head),
            "at_us": self.at_us,
            "mac": hex(&self.mac),
        })
        .to_string()
    }

    fn from_value(value: &Value) -> Result<Self, CheckpointError> {
        let field = |name: &str| {
            value
                .get(name)
                .ok_or_else(|| CheckpointError::Malformed(format!("`{name}` is missing")))
        };
        let text = |name: &str| {
            field(name)?
                .as_str()
                .ok_or_else(|| CheckpointError::Malformed(format!("`{name}` is not a string")))
        };
        let int = |name: &str| {
            field(name)?
                .as_i64()
                .ok_or_else(|| CheckpointError::Malformed(format!("`{name}` is not an integer")))
        };
        let bytes = |name: &str| {
            unhex(text(name)?)
                .filter(|b| b.len() == 32)
                .ok_or_else(|| CheckpointError::Malformed(format!("`{name}` is not 64 hex digits")))
        };
        Ok(Self {
            service: text("service")?.to_owned(),
            seq: int("seq")?,
            head: bytes("head")?,
            at_us: int("at_us")?,
            mac: bytes("mac")?,
        })
    }

    /// Every checkpoint of `service` in `text`: a JSON checkpoint, or log lines (text or JSON
    /// format) of which those that carry a checkpoint count and the rest are skipped.
    /// Checkpoints of other services are skipped; a malformed one of `service` is an error.
    pub fn parse_all(text: &str, service: &str) -> Result<Vec<Self>, CheckpointError> {
        let mut found = Vec::new();
        for line in text.lines() {
            let Some(value) = checkpoint_value(line) else {
                continue;
            };
            if value.get("service").and_then(Value::as_str) != Some(service) {
                continue;
            }
            found.push(Self::from_value(&value)?);
        }
        if found.is_empty() {
            return Err(CheckpointError::NoneFound(service.to_owned()));
        }
        Ok(found)
    }
}

/// The checkpoint object a line carries, if any: the line itself as JSON, a JSON log line's
/// `checkpoint` field, or the JSON after `checkpoint=` in a text log line (colours stripped).
fn checkpoint_value(line: &str) -> Option<Value> {
    let line = strip_ansi(line);
    let line = line.trim();
    if let Ok(value) = serde_json::from_str::<Value>(line) {
        if value.get("mac").is_some() {
            return Some(value);
        }
        if let Some(inner) = value.get("checkpoint").and_then(Value::as_str) {
            return serde_json::from_str(inner).ok();
        }
        return None;
    }
    line.match_indices('{').find_map(|(start, _)| {
        serde_json::Deserializer::from_str(&line[start..])
            .into_iter::<Value>()
            .next()?
            .ok()
            .filter(|v| v.get("mac").is_some() && v.get("service").is_some())
    })
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl AuditKey {
    pub(crate) fn checkpoint_mac(
        &self,
        service: &str,
        seq: i64,
        head: &[u8],
        at_us: i64,
    ) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(self.hmac_key());
        ctx.update(b"orchestrator-audit-checkpoint-v1");
        ctx.update(&(service.len() as u64).to_be_bytes());
        ctx.update(service.as_bytes());
        ctx.update(&seq.to_be_bytes());
        ctx.update(&(head.len() as u64).to_be_bytes());
        ctx.update(head);
        ctx.update(&at_us.to_be_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

impl<E> Ledger<E> {
    /// A checkpoint of `service`'s chain now: the newer of the head in the database and the
    /// newest this process committed or saw. A database head behind what this process knows
    /// (removed records, a restored copy) is logged as an error, and the checkpoint keeps what
    /// this process knows, so the loss stays provable.
    pub async fn checkpoint(&self, service: &str) -> Result<Checkpoint, AuditError> {
        let row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1")
            .fetch_one(self.shared.db.pool())
            .await?;
        let stored: (i64, Vec<u8>) = (row.try_get("seq")?, row.try_get("mac")?);
        let (seq, head) = {
            let mut latest = self
                .shared
                .latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if stored.0 >= latest.0 {
                *latest = stored;
            } else {
                tracing::error!(
                    head = stored.0,
                    seen = latest.0,
                    "the audit log moved backwards: the database was rolled back"
                );
            }
            latest.clone()
        };
        Ok(Checkpoint::sign(
            &self.shared.key,
            service,
            seq,
            &head,
            now_us(),
        ))
    }
}

/// Checks the database against `checkpoint`: the MAC is the key's, and the chain holds the
/// checkpoint's record with the checkpoint's MAC and a head at or after it. `Ok(Err(why))`
/// when it does not (the database is behind the checkpoint, or diverges from it).
pub async fn check(
    pool: &AnyPool,
    key: &AuditKey,
    checkpoint: &Checkpoint,
) -> Result<Result<(), String>, orchestrator_store::StoreError> {
    if !checkpoint.is_authentic(key) {
        return Ok(Err(format!(
            "the checkpoint of record {} fails its MAC: it was altered, or is not {}'s (another AUDIT_KEY)",
            checkpoint.seq, checkpoint.service
        )));
    }
    let head: i64 = sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?
        .try_get("seq")?;
    if head < checkpoint.seq {
        return Ok(Err(format!(
            "the database is behind a checkpoint: its chain ends at record {head}, but the service \
             checkpointed record {} (at_us {}): records were removed from the end, or the database \
             was restored from an older copy",
            checkpoint.seq, checkpoint.at_us
        )));
    }
    if checkpoint.seq == 0 {
        return Ok(Ok(()));
    }
    let mac: Option<Vec<u8>> = sqlx::query("SELECT mac FROM audit_log WHERE seq = $1")
        .bind(checkpoint.seq)
        .fetch_optional(pool)
        .await?
        .map(|row| row.try_get("mac"))
        .transpose()?;
    Ok(match mac {
        Some(mac) if mac == checkpoint.head => Ok(()),
        Some(_) => Err(format!(
            "the database diverges from a checkpoint: record {} is not the record the service \
             checkpointed: the chain was rewritten from there",
            checkpoint.seq
        )),
        None => Err(format!(
            "the database is behind a checkpoint: record {} is missing",
            checkpoint.seq
        )),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (AuditKey, Checkpoint) {
        let key = AuditKey::from_bytes(&[7; 32]);
        let cp = Checkpoint::sign(&key, "vault", 12, &[3; 32], 1_700_000_000_000_000);
        (key, cp)
    }

    #[test]
    fn a_checkpoint_round_trips_and_any_change_breaks_its_mac() {
        let (key, cp) = sample();
        assert!(cp.is_authentic(&key));
        let parsed = Checkpoint::parse_all(&cp.to_json(), "vault").unwrap();
        assert_eq!(parsed, vec![cp.clone()]);
        for change in [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.service = "infra".into(),
            |c: &mut Checkpoint| c.head[0] ^= 1,
            |c: &mut Checkpoint| c.at_us += 1,
        ] {
            let mut other = cp.clone();
            change(&mut other);
            assert!(!other.is_authentic(&key));
        }
        assert!(!cp.is_authentic(&AuditKey::from_bytes(&[8; 32])));
        // Not a record's MAC: the same bytes under the chain's domain differ.
        assert_ne!(cp.head, cp.mac);
    }

    #[test]
    fn checkpoints_are_found_in_text_and_json_log_lines() {
        let (_, cp) = sample();
        let text_line = format!(
            "2026-11-30T06:00:00Z  \u{1b}[32m INFO\u{1b}[0m audit checkpoint \u{1b}[3mcheckpoint\u{1b}[0m\u{1b}[2m=\u{1b}[0m{} reason=interval",
            cp.to_json()
        );
        let json_line =
            json!({"level": "INFO", "message": "audit checkpoint", "checkpoint": cp.to_json()})
                .to_string();
        let other = Checkpoint::sign(&AuditKey::from_bytes(&[7; 32]), "infra", 1, &[0; 32], 1);
        let log = format!(
            "unrelated line\n{text_line}\n{{\"message\":\"x\"}}\n{json_line}\n{}\n",
            other.to_json()
        );
        let found = Checkpoint::parse_all(&log, "vault").unwrap();
        assert_eq!(found, vec![cp.clone(), cp]);
        assert_eq!(
            Checkpoint::parse_all("nothing here", "vault"),
            Err(CheckpointError::NoneFound("vault".into()))
        );
        assert!(matches!(
            Checkpoint::parse_all(
                r#"{"service":"vault","seq":1,"head":"zz","at_us":1,"mac":"00"}"#,
                "vault"
            ),
            Err(CheckpointError::Malformed(_))
        ));
    }
}
