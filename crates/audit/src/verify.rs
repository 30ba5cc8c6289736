//! Checking a service's audit chain (`orchctl audit verify`).

use sqlx::{AnyPool, Row};

use crate::chain::{AuditKey, Entry, GENESIS, Record};

/// The first record that does not belong in the chain, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: i64,
    /// The head's sequence number.
    pub head: i64,
    /// `None` when the whole chain and the head verify.
    pub broken: Option<Broken>,
}

/// Walks the whole chain in order, checking sequence continuity, every MAC, and that the head
/// row names the last record.
pub async fn verify(
    pool: &AnyPool,
    key: &AuditKey,
) -> Result<VerifyReport, orchestrator_store::StoreError> {
    const PAGE: i64 = 5_000;
    let mut prev = GENESIS.to_vec();
    let mut expected = 1;
    let mut records = 0;
    let (head_seq, head_mac) = head_row(pool).await?;
    loop {
        let rows = sqlx::query(
            "SELECT seq, at_us, caller, method, target, outcome, request_id, detail, digest, mac \
             FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(expected)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let last_page = (rows.len() as i64) < PAGE;
        for row in rows {
            let record = Record {
                seq: row.try_get("seq")?,
                at_us: row.try_get("at_us")?,
                entry: Entry {
                    caller: row.try_get("caller")?,
                    method: row.try_get("method")?,
                    target: row.try_get("target")?,
                    outcome: row.try_get("outcome")?,
                    request_id: row.try_get("request_id")?,
                    detail: row.try_get("detail")?,
                    digest: row.try_get("digest")?,
                },
            };
            let mac: Vec<u8> = row.try_get("mac")?;
            if record.seq != expected {
                return Ok(broken(
                    records,
                    head_seq,
                    expected,
                    format!("records {expected}..{} are missing", record.seq - 1),
                ));
            }
            if !key.verify(&prev, &record, &mac) {
                return Ok(broken(
                    records,
                    head_seq,
                    record.seq,
                    "MAC mismatch: the record was altered, or forged without the AUDIT_KEY".into(),
                ));
            }
            prev = mac;
            expected += 1;
            records += 1;
        }
        if last_page {
            break;
        }
    }
    let broken = if head_seq != records {
        Some(Broken {
            seq: head_seq.min(records) + 1,
            reason: format!(
                "the head names record {head_seq} but the log ends at {records}: records were removed from the end"
            ),
        })
    } else if head_mac != prev {
        Some(Broken {
            seq: head_seq,
            reason: "the head's MAC does not match the last record".into(),
        })
    } else {
        None
    };
    Ok(VerifyReport {
        records,
        head: head_seq,
        broken,
    })
}

fn broken(records: i64, head: i64, seq: i64, reason: String) -> VerifyReport {
    VerifyReport {
        records,
        head,
        broken: Some(Broken { seq, reason }),
    }
}

async fn head_row(pool: &AnyPool) -> Result<(i64, Vec<u8>), orchestrator_store::StoreError> {
    let row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok((row.try_get("seq")?, row.try_get("mac")?))
}
