//! Every query against both databases: a fresh SQLite file and a fresh PostgreSQL database
//! (with the vault's own role and schema, as in production) per test.

use orchestrator_audit::{AuditKey, Entry, Ledger};
use orchestrator_fields::Page;
use orchestrator_store::testing::TestDatabase;
use orchestrator_store::{Database, Dialect, StoreError};
use sqlx::AnyConnection;

use super::data_keys::{PrimaryUse, count_encryptions_under_head};
use super::secrets::{VersionRow, insert_version, prune_versions, versions};
use super::*;
use crate::crypto::{RowRef, digest};

async fn open(test_db: &TestDatabase) -> (Database, Ledger<tonic::Status>) {
    let db = test_db
        .open(
            "vault",
            [
                orchestrator_audit::migrations(test_db.dialect()),
                migrations(test_db.dialect()),
            ],
        )
        .await;
    let ledger = Ledger::start(db.clone(), AuditKey::from_bytes(&[7; 32]));
    (db, ledger)
}

/// One read's lookup, alone in its statement.
async fn read_granted(
    db: &Database,
    row: RowRef<'_>,
    project_id: &str,
    target_prefix: &str,
    key_target: &str,
) -> Result<GrantedRead, StoreError> {
    let mut conn = db.pool().acquire().await?;
    let asked = [lookup(row, project_id, target_prefix, key_target)];
    let mut found = read_granted_many(&mut conn, db.dialect(), &asked).await?;
    assert_eq!(found.len(), 1);
    Ok(found.remove(0))
}

fn lookup(row: RowRef<'_>, project_id: &str, target_prefix: &str, key_target: &str) -> Lookup {
    Lookup {
        user_id: row.user_id.to_owned(),
        key: row.key.to_owned(),
        version: row.version,
        project_id: project_id.to_owned(),
        target_prefix: target_prefix.to_owned(),
        key_target: key_target.to_owned(),
    }
}

fn row<'a>(user_id: &'a str, key: &'a str, version: i64) -> RowRef<'a> {
    RowRef {
        user_id,
        key,
        version,
    }
}

fn wrapping<'a>(master_key_id: &'a str, wrapped: &'a [u8]) -> Wrapping<'a> {
    Wrapping {
        master_key_id,
        wrapped,
        kcv: b"kcv",
    }
}

/// Data key 1 and `versions` versions of (user_id, key), as a Put would leave them.
/// A PostgreSQL database (dropped with the first value) holding the first data key and key
/// `u`/`k` at version 1, and a ledger on it.
async fn seeded_postgres() -> (TestDatabase, Database, Ledger<tonic::Status>) {
    let test_db = TestDatabase::postgres(&["vault"]).await;
    let (db, ledger) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    seed(&mut conn, "u", "k", 1).await;
    drop(conn);
    (test_db, db, ledger)
}

async fn seed(conn: &mut AnyConnection, user_id: &str, key: &str, versions: i64) {
    insert_first_data_key(conn, wrapping("m1", b"wrapped"), 1)
        .await
        .unwrap();
    for version in 1..=versions {
        let next = next_version(conn, user_id, key, None, 10 * version)
            .await
            .unwrap();
        assert!(matches!(next, NextVersion::Taken { version: v, .. } if v == version));
        let ciphertext = format!("ct-{user_id}-{key}-{version}");
        insert_version(
            conn,
            row(user_id, key, version),
            1,
            ciphertext.as_bytes(),
            10 * version,
        )
        .await
        .unwrap();
    }
}

/// One new version alone in its statement, under data key 1.
async fn store_one(
    conn: &mut AnyConnection,
    dialect: Dialect,
    row: RowRef<'_>,
    ciphertext: &[u8],
    now: i64,
    prune_up_to: i64,
) -> Stored {
    let new = NewVersion {
        row,
        ciphertext,
        prune_up_to,
    };
    let mut stored = store_versions(conn, dialect, &[new], 1, now).await.unwrap();
    assert_eq!(stored.len(), 1);
    stored.remove(0)
}

async fn versions_take_turns_by_check_and_set(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    let taken = |version, created_us| NextVersion::Taken {
        version,
        created_us,
    };
    let mismatch = |current| NextVersion::Mismatch { current };
    // (key, expected version, now) and what the write finds.
    let steps = [
        ("k", Some(3), 5, mismatch(0)),
        ("k", Some(0), 5, taken(1, 5)),
        ("k", Some(0), 6, mismatch(1)),
        ("k", Some(1), 7, taken(2, 5)),
        ("k", None, 8, taken(3, 5)),
        ("k", Some(2), 9, mismatch(3)),
        ("other", None, 9, taken(1, 9)),
    ];
    for (key, expected, now, found) in steps {
        let next = next_version(conn, "u", key, expected, now).await.unwrap();
        assert_eq!(next, found, "{key} {expected:?}");
    }
    let meta = metadata(conn, "u", "k").await.unwrap().unwrap();
    assert_eq!(
        (
            meta.head.current_version,
            meta.head.created_us,
            meta.head.updated_us
        ),
        (3, 5, 8)
    );
    assert!(metadata(conn, "u", "none").await.unwrap().is_none());
}

async fn a_stored_version_prunes_and_lists_as_the_table_says(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    seed(conn, "u", "k", 3).await;
    let next = next_version(conn, "u", "k", None, 40).await.unwrap();
    assert_eq!(
        next,
        NextVersion::Taken {
            version: 4,
            created_us: 10
        }
    );
    // Version 4, keeping the newest 2: versions 1 and 2 pruned.
    let stored = store_one(conn, db.dialect(), row("u", "k", 4), b"ct-4", 40, 2).await;
    assert_eq!(stored.pruned, [1, 2]);
    let listed = |v: &[VersionRow]| {
        v.iter()
            .map(|v| (v.version, v.created_us))
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&stored.versions), [(4, 40), (3, 30)]);
    assert!(stored.versions.iter().all(VersionRow::is_live));
    // What it says is what the table holds.
    assert_eq!(
        listed(&versions(conn, "u", "k").await.unwrap()),
        [(4, 40), (3, 30)]
    );
    // Nothing to prune (0), another key untouched.
    let next = next_version(conn, "u", "other", None, 50).await.unwrap();
    assert_eq!(
        next,
        NextVersion::Taken {
            version: 1,
            created_us: 50
        }
    );
    let stored = store_one(conn, db.dialect(), row("u", "other", 1), b"ct", 50, 0).await;
    assert!(stored.pruned.is_empty());
    assert_eq!(listed(&stored.versions), [(1, 50)]);
    assert_eq!(
        listed(&versions(conn, "u", "k").await.unwrap()),
        [(4, 40), (3, 30)]
    );
}

/// New versions `taken` of `keys` (their ciphertexts made up), each keeping its newest
/// `keep` versions, in one call, under data key 1 at time 99.
async fn store_new(
    conn: &mut AnyConnection,
    dialect: Dialect,
    keys: &[(&str, &str)],
    taken: &[(i64, i64)],
    keep: &[i64],
) -> Vec<Stored> {
    let values: Vec<Vec<u8>> = keys
        .iter()
        .map(|(user_id, key)| format!("ct-{user_id}-{key}").into_bytes())
        .collect();
    let new: Vec<NewVersion<'_>> = keys
        .iter()
        .zip(taken)
        .zip(&values)
        .zip(keep)
        .map(
            |((((user_id, key), (version, _)), value), keep)| NewVersion {
                row: row(user_id, key, *version),
                ciphertext: value,
                prune_up_to: (version - keep).max(0),
            },
        )
        .collect();
    store_versions(conn, dialect, &new, 1, 99).await.unwrap()
}

/// `keys` stored one call each, as [`store_new`] does, keeping `keep`: what each call answered,
/// and the versions taken with when their keys were created.
async fn store_one_by_one(
    db: &Database,
    keys: &[(&str, &str)],
    keep: &[i64],
) -> (Vec<Stored>, Vec<(i64, i64)>) {
    let mut conn = db.pool().acquire().await.unwrap();
    let (mut stored, mut taken) = (Vec::new(), Vec::new());
    for (name, keep) in keys.iter().zip(keep) {
        let next = next_versions(&mut conn, db.dialect(), &[*name], 99)
            .await
            .unwrap();
        stored.extend(store_new(&mut conn, db.dialect(), &[*name], &next, &[*keep]).await);
        taken.extend(next);
    }
    (stored, taken)
}

async fn many_versions_store_in_one_statement_each_as_if_alone(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let dialect = db.dialect();
    {
        let mut conn = db.pool().acquire().await.unwrap();
        seed(&mut conn, "u", "k", 3).await;
        seed(&mut conn, "u", "j", 1).await;
        seed(&mut conn, "w", "k", 2).await;
    }
    // (user, key) and how many versions to keep; "u"/"new" does not exist yet.
    let keys = [("u", "k"), ("u", "new"), ("w", "k"), ("u", "j")];
    let keep = [2, 2, 1, 5];
    let listed = |stored: &[Stored]| {
        stored
            .iter()
            .map(|s| {
                let versions: Vec<_> = s
                    .versions
                    .iter()
                    .map(|v| (v.version, v.created_us))
                    .collect();
                (versions, s.pruned.clone())
            })
            .collect::<Vec<_>>()
    };
    // Together, in a transaction rolled back.
    let (together, taken_together) = {
        let mut tx = db.begin_write().await.unwrap();
        let taken = next_versions(&mut tx, dialect, &keys, 99).await.unwrap();
        let stored = store_new(&mut tx, dialect, &keys, &taken, &keep).await;
        (listed(&stored), taken)
    };
    let (alone, taken_alone) = store_one_by_one(&db, &keys, &keep).await;
    let alone = listed(&alone);
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(taken_together, taken_alone);
    assert_eq!(together, alone);
    assert_eq!(taken_alone, [(4, 10), (1, 99), (3, 10), (2, 10)]);
    assert_eq!(
        alone,
        [
            (vec![(4, 99), (3, 30)], vec![1, 2]),
            (vec![(1, 99)], vec![]),
            (vec![(3, 99)], vec![1, 2]),
            (vec![(2, 99), (1, 10)], vec![]),
        ]
    );
    // What they say is what the table holds.
    let held: Vec<i64> = versions(&mut conn, "w", "k")
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(held, [3]);
    assert!(
        store_versions(&mut conn, dialect, &[], 1, 99)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A key may come several times in one call (callers writing one key at once): each time takes
/// the key's next version, and each answer is what storing them one after another says, with
/// the versions the call itself prunes (which it never stores) among the pruned.
async fn a_key_repeated_in_one_call_takes_versions_in_turn(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let dialect = db.dialect();
    {
        let mut conn = db.pool().acquire().await.unwrap();
        seed(&mut conn, "u", "k", 3).await;
        seed(&mut conn, "w", "k", 1).await;
    }
    // "u"/"k" three times keeping 2 (pruning its own new versions in turn), the new "u"/"new"
    // twice keeping 1, "w"/"k" twice keeping 5.
    let keys = [
        ("u", "k"),
        ("u", "new"),
        ("u", "k"),
        ("w", "k"),
        ("u", "new"),
        ("u", "k"),
        ("w", "k"),
    ];
    let keep = [2, 1, 2, 5, 1, 2, 5];
    let listed = |stored: &[Stored]| {
        stored
            .iter()
            .map(|s| {
                let versions: Vec<_> = s.versions.iter().map(|v| v.version).collect();
                (versions, s.pruned.clone())
            })
            .collect::<Vec<_>>()
    };
    let held = |versions: Vec<VersionRow>| versions.iter().map(|v| v.version).collect::<Vec<_>>();
    // Together, in a transaction rolled back.
    let (together, taken_together) = {
        let mut tx = db.begin_write().await.unwrap();
        let taken = next_versions(&mut tx, dialect, &keys, 99).await.unwrap();
        let stored = store_new(&mut tx, dialect, &keys, &taken, &keep).await;
        assert_eq!(held(versions(&mut tx, "u", "k").await.unwrap()), [6, 5]);
        assert_eq!(held(versions(&mut tx, "u", "new").await.unwrap()), [2]);
        assert_eq!(held(versions(&mut tx, "w", "k").await.unwrap()), [3, 2, 1]);
        (listed(&stored), taken)
    };
    let (alone, taken_alone) = store_one_by_one(&db, &keys, &keep).await;
    let alone = listed(&alone);
    assert_eq!(taken_together, taken_alone);
    assert_eq!(together, alone);
    assert_eq!(
        taken_alone,
        [
            (4, 10),
            (1, 99),
            (5, 10),
            (2, 10),
            (2, 99),
            (6, 10),
            (3, 10)
        ]
    );
    assert_eq!(
        alone,
        [
            (vec![4, 3], vec![1, 2]),
            (vec![1], vec![]),
            (vec![5, 4], vec![3]),
            (vec![2, 1], vec![]),
            (vec![2], vec![1]),
            (vec![6, 5], vec![4]),
            (vec![3, 2, 1], vec![]),
        ]
    );
}

async fn deletes_change_the_rows_as_the_returned_metadata_says(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    seed(conn, "u", "k", 4).await;
    let mut meta = metadata(conn, "u", "k").await.unwrap().unwrap();
    let numbers: Vec<i64> = meta.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [4, 3, 2, 1], "newest first");
    assert!(meta.has_live_version());

    assert_eq!(prune_versions(conn, "u", "k", 1).await.unwrap(), [1]);
    meta.versions.pop();
    // 4: deleted, then destroyed (keeps its delete time); 3: destroyed at once; 2: untouched.
    soft_delete_version(conn, "u", "k", &mut meta.versions[0], 100)
        .await
        .unwrap();
    destroy_version(conn, "u", "k", &mut meta.versions[0], 200)
        .await
        .unwrap();
    destroy_version(conn, "u", "k", &mut meta.versions[1], 300)
        .await
        .unwrap();
    touch_key(conn, &mut meta, 400).await.unwrap();
    let stored = metadata(conn, "u", "k").await.unwrap().unwrap();
    assert_eq!(stored, meta);
    assert_eq!(stored.versions[0].deleted_us, Some(100));
    assert!(stored.versions[0].is_destroyed() && !stored.versions[0].is_live());
    assert_eq!(stored.versions[1].deleted_us, Some(300));
    assert!(stored.versions[2].is_live());
    assert_eq!(stored.head.updated_us, 400);
    assert_eq!(
        versions(conn, "u", "k").await.unwrap().len(),
        3,
        "pruned rows are gone, deleted ones kept"
    );
    let pb = stored.into_pb();
    assert_eq!(pb.current_version, 4);
    assert!(pb.versions[0].destroyed && pb.versions[0].delete_time.is_some());
}

async fn put_requests_remember_what_they_wrote(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    assert!(find_put_request(conn, "r1").await.unwrap().is_none());
    insert_put_request(conn, "r1", row("u", "k", 3), 1)
        .await
        .unwrap();
    let seen = find_put_request(conn, "r1").await.unwrap().unwrap();
    assert_eq!(
        (seen.user_id.as_str(), seen.key.as_str(), seen.version),
        ("u", "k", 3)
    );
    // A request id is written once.
    assert!(
        insert_put_request(conn, "r1", row("u", "k", 4), 1)
            .await
            .is_err()
    );
}

async fn lists_page_by_key_with_each_keys_versions(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    {
        let mut conn = db.pool().acquire().await.unwrap();
        seed(&mut conn, "u", "a", 1).await;
        for (user_id, key, n) in [("u", "b", 3), ("u", "c", 2), ("v", "a2", 1)] {
            for version in 1..=n {
                next_version(&mut conn, user_id, key, None, version)
                    .await
                    .unwrap();
                insert_version(&mut conn, row(user_id, key, version), 1, b"ct", version)
                    .await
                    .unwrap();
            }
        }
    }
    let page = Page::parse(2, "", 1).unwrap();
    let (first, token) = list_secrets(db.pool(), "u", &page).await.unwrap();
    let keys = |metas: &[SecretMeta]| -> Vec<(String, usize)> {
        metas
            .iter()
            .map(|m| (m.key.clone(), m.versions.len()))
            .collect()
    };
    assert_eq!(keys(&first), [("a".to_owned(), 1), ("b".to_owned(), 3)]);
    assert!(first.iter().all(|m| m.user_id == "u"));
    assert_eq!(first[1].versions[0].version, 3, "versions newest first");
    let next = Page::parse(2, &token, 1).unwrap();
    assert_eq!(next.after(), Some(&["b".to_owned()][..]));
    let (second, token) = list_secrets(db.pool(), "u", &next).await.unwrap();
    assert_eq!(keys(&second), [("c".to_owned(), 2)]);
    assert_eq!(token, "");
    let (nobody, token) = list_secrets(db.pool(), "w", &page).await.unwrap();
    assert!(nobody.is_empty() && token.is_empty());
}

async fn reads_bring_the_newest_audit_record_of_their_row(test_db: TestDatabase) {
    let (db, ledger) = open(&test_db).await;
    {
        let mut conn = db.pool().acquire().await.unwrap();
        seed(&mut conn, "u", "k", 2).await;
    }
    let prefix = "users/u/secrets/k/versions/";
    let whole = "users/u/secrets/k";
    let stored = |version: i64| format!("ct-u-k-{version}").into_bytes();
    let read = |wanted, project| read_granted(&db, row("u", "k", wanted), project, prefix, whole);
    let live = |wanted| async move {
        match read(wanted, "p").await? {
            GrantedRead::Granted { row, .. } => Ok::<_, StoreError>(row),
            GrantedRead::NotGranted => panic!("the key is granted to p"),
        }
    };
    // Not granted: nothing is read, whatever exists.
    assert!(matches!(
        read(0, "p").await.unwrap(),
        GrantedRead::NotGranted
    ));
    {
        let mut conn = db.pool().acquire().await.unwrap();
        insert_grant(&mut conn, "u", "k", "p", 5).await.unwrap();
    }
    assert!(matches!(
        read(0, "other").await.unwrap(),
        GrantedRead::NotGranted
    ));
    // Version 2 is vouched for; version 1 never was; the key's record names version 2.
    ledger
        .record(Entry::new("test", "put", format!("{prefix}2")).digest(digest(&stored(2))))
        .await
        .unwrap();
    ledger
        .record(Entry::new("test", "put", whole).digest(b"key says 2".to_vec()))
        .await
        .unwrap();
    let GrantedRead::Granted { newest, .. } = read(0, "p").await.unwrap() else {
        panic!("granted")
    };
    assert_eq!(
        newest.unwrap().verify(&ledger).unwrap(),
        Some(b"key says 2".to_vec())
    );
    let GrantedRead::Granted { newest, .. } = read(1, "p").await.unwrap() else {
        panic!("granted")
    };
    assert!(
        newest.is_none(),
        "only a read of the newest version checks the key's record"
    );
    let newest = live(0).await.unwrap().unwrap();
    assert_eq!((newest.version, newest.created_us), (2, 20));
    assert_eq!(newest.ciphertext.as_deref(), Some(&stored(2)[..]));
    assert_eq!(
        newest.attestation.verify(&ledger).unwrap(),
        Some(digest(&stored(2)))
    );
    let first = live(1).await.unwrap().unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.attestation.verify(&ledger).unwrap(), None);
    assert!(live(3).await.unwrap().is_none());

    let targets = [format!("{prefix}1"), format!("{prefix}2")];
    let found = attestations(db.pool(), &targets).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, targets[1]);
    assert_eq!(
        found[0].1.verify(&ledger).unwrap(),
        Some(digest(&stored(2)))
    );

    {
        let mut conn = db.pool().acquire().await.unwrap();
        let mut meta = metadata(&mut conn, "u", "k").await.unwrap().unwrap();
        soft_delete_version(&mut conn, "u", "k", &mut meta.versions[0], 30)
            .await
            .unwrap();
    }
    let newest = live(0).await.unwrap().unwrap();
    assert_eq!(newest.version, 1, "a deleted version is not live");
    assert!(live(2).await.unwrap().is_none());
}

/// What a test compares of a lookup's answer: granted, and the version and ciphertext found.
fn found(read: &GrantedRead) -> Option<Option<(i64, Option<Vec<u8>>)>> {
    match read {
        GrantedRead::NotGranted => None,
        GrantedRead::Granted { row, .. } => Some(
            row.as_ref()
                .map(|row| (row.version, row.ciphertext.clone())),
        ),
    }
}

async fn many_reads_share_one_statement_each_answered_as_if_alone(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    {
        let mut conn = db.pool().acquire().await.unwrap();
        seed(&mut conn, "u", "k", 2).await;
        seed(&mut conn, "u", "j", 1).await;
        seed(&mut conn, "w", "k", 3).await;
        insert_grant(&mut conn, "u", "k", "p", 5).await.unwrap();
        insert_grant(&mut conn, "w", "k", "q", 5).await.unwrap();
    }
    let asked = [
        (row("u", "k", 0), "p"),
        (row("u", "j", 0), "p"), // not granted
        (row("u", "k", 1), "p"),
        (row("u", "k", 7), "p"), // no such version
        (row("u", "k", 0), "q"), // granted to another project
        (row("w", "k", 0), "q"),
        (row("w", "k", 2), "q"),
        (row("u", "k", 0), "p"), // twice in one batch
    ];
    let lookups: Vec<Lookup> = asked
        .iter()
        .map(|(row, project)| lookup(*row, project, "v/", "k"))
        .collect();
    let mut conn = db.pool().acquire().await.unwrap();
    let together = read_granted_many(&mut conn, db.dialect(), &lookups)
        .await
        .unwrap();
    assert_eq!(together.len(), asked.len());
    let mut alone = Vec::new();
    for (row, project) in asked {
        alone.push(found(
            &read_granted(&db, row, project, "v/", "k").await.unwrap(),
        ));
    }
    assert_eq!(together.iter().map(found).collect::<Vec<_>>(), alone);
    let ct = |user: &str, key: &str, v: i64| {
        Some(Some((v, Some(format!("ct-{user}-{key}-{v}").into_bytes()))))
    };
    assert_eq!(
        alone,
        [
            ct("u", "k", 2),
            None,
            ct("u", "k", 1),
            Some(None),
            None,
            ct("w", "k", 3),
            ct("w", "k", 2),
            ct("u", "k", 2)
        ]
    );
    let none = read_granted_many(&mut conn, db.dialect(), &[]).await;
    assert!(none.unwrap().is_empty());
}

async fn data_keys_rotate_rewrap_and_retire(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut tx = db.begin_write().await.unwrap();
    let conn = &mut *tx;
    seed(conn, "u", "k", 3).await;
    // A second first key (another replica starting) changes nothing.
    insert_first_data_key(conn, wrapping("m2", b"other"), 2)
        .await
        .unwrap();
    let stored = stored_data_keys(conn).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].id, stored[0].master_key_id.as_str()), (1, "m1"));
    assert_eq!(
        count_encryptions(conn, 3).await.unwrap(),
        PrimaryUse {
            id: 1,
            encryptions: 3
        }
    );
    assert_eq!(count_encryptions(conn, 1).await.unwrap().encryptions, 4);

    assert_eq!(primary_data_key_id(conn).await.unwrap(), 1);
    assert_eq!(next_data_key_id(conn).await.unwrap(), 2);
    demote_primary(conn).await.unwrap();
    insert_primary_data_key(conn, 2, wrapping("m1", b"w2"), 5)
        .await
        .unwrap();
    assert_eq!(primary_data_key_id(conn).await.unwrap(), 2);

    let start = RowKey::start();
    let stale = stale_values(conn, 2, &start, 2).await.unwrap();
    assert_eq!(stale.len(), 2, "the limit holds");
    let last = &stale[1];
    let after = RowKey {
        user_id: last.user_id.clone(),
        key: last.key.clone(),
        version: last.version,
    };
    let rest = stale_values(conn, 2, &after, 10).await.unwrap();
    assert_eq!(
        rest.len(),
        1,
        "the next batch starts after the last row read"
    );
    assert!(rest[0].version > last.version);
    let stale = stale_values(conn, 2, &start, 10).await.unwrap();
    assert_eq!(stale.len(), 3);
    assert!(stale.iter().all(|r| r.ciphertext.starts_with(b"ct-u-k-")));
    let mut rewrapped: Vec<Rewrapped> = stale
        .into_iter()
        .map(|r| Rewrapped {
            new: format!("new-{}", r.version).into_bytes(),
            user_id: r.user_id,
            key: r.key,
            version: r.version,
            old: r.ciphertext,
        })
        .collect();
    let stored = store_rewrapped(conn, db.dialect(), 2, &rewrapped[..2])
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stale_values(conn, 2, &start, 10).await.unwrap().len(), 1);
    // A row changed since it was read (a Put, a delete, another replica) is left as it is.
    let read = std::mem::replace(&mut rewrapped[2].old, b"changed since".to_vec());
    assert!(
        store_rewrapped(conn, db.dialect(), 2, &rewrapped[2..])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(stale_values(conn, 2, &start, 10).await.unwrap().len(), 1);
    rewrapped[2].old = read;
    let stored = store_rewrapped(conn, db.dialect(), 2, &rewrapped[2..])
        .await
        .unwrap();
    assert_eq!(
        stored,
        [(
            rewrapped[2].user_id.clone(),
            rewrapped[2].key.clone(),
            rewrapped[2].version
        )]
    );
    assert!(stale_values(conn, 2, &start, 10).await.unwrap().is_empty());

    // The master key changes only if it is still the one the caller saw.
    rewrap_data_key(conn, 1, "m9", wrapping("m2", b"x"))
        .await
        .unwrap();
    rewrap_data_key(conn, 2, "m1", wrapping("m2", b"y"))
        .await
        .unwrap();
    let stored: Vec<(String, Vec<u8>)> = stored_data_keys(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.master_key_id, k.wrapped))
        .collect();
    assert_eq!(
        stored,
        [
            ("m1".to_owned(), b"wrapped".to_vec()),
            ("m2".to_owned(), b"y".to_vec())
        ]
    );
    tx.commit().await.unwrap();

    let status = data_key_status(db.pool()).await.unwrap();
    let summary: Vec<_> = status
        .iter()
        .map(|k| (k.id, k.state, k.ciphertexts))
        .collect();
    assert_eq!(
        summary,
        [(1, KeyState::DecryptOnly, 0), (2, KeyState::Primary, 3)]
    );
    assert_eq!((status[0].encryptions, status[0].created_us), (4, 1));
    retire_empty_keys(db.pool()).await.unwrap();
    let states: Vec<_> = data_key_status(db.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.state)
        .collect();
    assert_eq!(states, [KeyState::Retired, KeyState::Primary]);
}

#[test]
fn key_states_round_trip_and_unknown_ones_are_errors() {
    for state in [KeyState::Primary, KeyState::DecryptOnly, KeyState::Retired] {
        assert_eq!(
            KeyState::try_from(state.as_str().to_owned()).unwrap(),
            state
        );
    }
    let err = KeyState::try_from("paused".to_owned()).unwrap_err();
    assert_eq!(err.to_string(), "unknown KeyState `paused`");
}

async fn grants_are_per_user_key_and_project_and_revocable(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    let db = &db;
    let live = |user, key, project| async move {
        let read = read_granted(db, row(user, key, 0), project, "v/", "k").await?;
        Ok::<_, StoreError>(matches!(read, GrantedRead::Granted { .. }))
    };
    assert!(grant(conn, "u1", "do", "p1").await.unwrap().is_none());
    assert!(!live("u1", "do", "p1").await.unwrap());
    insert_grant(conn, "u1", "do", "p1", 10).await.unwrap();
    // A live grant granted again keeps its time.
    insert_grant(conn, "u1", "do", "p1", 20).await.unwrap();
    let row = grant(conn, "u1", "do", "p1").await.unwrap().unwrap();
    assert_eq!((row.created_us, row.revoked_us), (10, None));
    assert!(live("u1", "do", "p1").await.unwrap());
    // Only that user's key, for that project.
    for (user, key, project) in [("u2", "do", "p1"), ("u1", "cf", "p1"), ("u1", "do", "p2")] {
        assert!(
            !live(user, key, project).await.unwrap(),
            "{user} {key} {project}"
        );
    }
    revoke_grant(conn, "u1", "do", "p1", 30).await.unwrap();
    // Revoking again keeps the first revocation's time.
    revoke_grant(conn, "u1", "do", "p1", 40).await.unwrap();
    let row = grant(conn, "u1", "do", "p1").await.unwrap().unwrap();
    assert_eq!((row.created_us, row.revoked_us), (10, Some(30)));
    assert!(!row.is_live() && !live("u1", "do", "p1").await.unwrap());
    // Granted anew, it is live again from then on.
    insert_grant(conn, "u1", "do", "p1", 50).await.unwrap();
    let row = grant(conn, "u1", "do", "p1").await.unwrap().unwrap();
    assert_eq!((row.created_us, row.revoked_us), (50, None));
    assert!(live("u1", "do", "p1").await.unwrap());
}

/// A data key is never deleted nor renumbered: a ciphertext names its key by id for as long as
/// it exists (on PostgreSQL no foreign key from `user_vault` checks this any more).
async fn data_keys_are_never_deleted_or_renumbered(test_db: TestDatabase) {
    let (db, _) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    seed(&mut conn, "u", "k", 1).await;
    for sql in [
        "DELETE FROM data_keys WHERE id = 1",
        "UPDATE data_keys SET id = 7 WHERE id = 1",
    ] {
        let refused = sqlx::query(sql).execute(&mut *conn).await.unwrap_err();
        assert!(
            refused.to_string().contains("never deleted or renumbered"),
            "{sql}: {refused}"
        );
    }
    // What the vault does change still changes.
    let primary = count_encryptions(&mut conn, 3).await.unwrap();
    assert_eq!((primary.id, primary.encryptions), (1, 3));
    let (id,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM data_keys WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(id, 1);
}

/// A transaction of its own holding the audit head, as a writer's batch does.
async fn hold_head(db: &Database) -> sqlx::Transaction<'static, sqlx::Any> {
    let mut holder = db.pool().begin().await.unwrap();
    sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// PostgreSQL: the statement that takes the audit head and counts encryptions locks the head
/// before the primary data key's row, the order every write takes them in. While it waits for
/// the head, the row stays free (a rotation, which holds the head and then takes the row,
/// would otherwise wait on it in a cycle).
#[tokio::test]
async fn counting_under_the_head_takes_the_head_first() {
    let (_test_db, db, _) = seeded_postgres().await;
    let holder = hold_head(&db).await;
    let pool = db.pool().clone();
    let counting = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let row = sqlx::query(super::data_keys::COUNT_UNDER_HEAD)
            .bind(1_i64)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        sqlx::Row::try_get::<i64, _>(&row, "encryptions").unwrap()
    });
    // Waiting for the head: the statement has not finished, and the row is free meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!counting.is_finished(), "it did not wait for the head");
    let mut other = db.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '500ms'")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("UPDATE data_keys SET encryptions = encryptions WHERE state = 'primary'")
        .execute(&mut *other)
        .await
        .expect("the data key's row was taken before the head");
    other.rollback().await.unwrap();
    holder.commit().await.unwrap();
    assert_eq!(counting.await.unwrap(), 1);
}

/// PostgreSQL: a count that waited for the head behind a rotation began before the new
/// primary existed, so it finds no primary to count on; the write runs again, head first, and
/// counts on the new primary (it failed INTERNAL when this was first tried, with two replicas).
#[tokio::test]
async fn a_count_that_waited_behind_a_rotation_runs_again_on_the_new_primary() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    let (_test_db, db, ledger) = seeded_postgres().await;
    // A rotation holding the head: key 1 demoted, key 2 the new primary, not yet committed.
    let mut rotation = hold_head(&db).await;
    demote_primary(&mut rotation).await.unwrap();
    insert_primary_data_key(&mut rotation, 2, wrapping("m1", b"wrapped-2"), 20)
        .await
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let counting = tokio::spawn({
        let attempts = attempts.clone();
        async move {
            ledger
                .write_concurrently(|tx| {
                    let attempts = attempts.clone();
                    Box::pin(async move {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        let primary =
                            count_encryptions_under_head(tx, Dialect::Postgres, 5).await?;
                        Ok((primary, Vec::new()))
                    })
                })
                .await
        }
    });
    // Committed while the count waits for the head, well within its lock timeout.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!counting.is_finished(), "it did not wait for the head");
    rotation.commit().await.unwrap();
    let primary = counting
        .await
        .unwrap()
        .expect("the count failed instead of running again");
    assert_eq!((primary.id, primary.encryptions), (2, 5));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

/// PostgreSQL: while no other write moved the head since this process last committed, a
/// concurrent write's count and records go in one statement; once another replica moved it,
/// that statement writes nothing and the write takes the head as before. Either way each
/// record is in the chain once and the chain verifies.
#[tokio::test]
async fn the_count_and_the_records_go_in_one_statement_while_the_head_is_known() {
    let (_test_db, db, ledger) = seeded_postgres().await;
    // Another replica: its own ledger on the same database.
    let replica = Ledger::<tonic::Status>::start(db.clone(), AuditKey::from_bytes(&[7; 32]));
    let entry = |n: u32| Entry::new("caller", "Put", format!("target-{n}"));
    // Counts 2 and records `entry(n)`: whether it took one statement, and the key counted on.
    let put = |n: u32| {
        let ledger = &ledger;
        async move {
            ledger
                .write_concurrently(|tx| {
                    Box::pin(async move {
                        let mut entries = vec![entry(n)];
                        let primary =
                            count_and_append(tx, Dialect::Postgres, 2, &mut entries).await?;
                        Ok(((entries.is_empty(), primary), entries))
                    })
                })
                .await
                .unwrap()
        }
    };
    // No head known yet: the head is taken first.
    assert_eq!(
        put(1).await,
        (
            false,
            PrimaryUse {
                id: 1,
                encryptions: 2
            }
        )
    );
    // Known now, and still there.
    assert_eq!(
        put(2).await,
        (
            true,
            PrimaryUse {
                id: 1,
                encryptions: 4
            }
        )
    );
    assert_eq!(
        put(3).await,
        (
            true,
            PrimaryUse {
                id: 1,
                encryptions: 6
            }
        )
    );
    // Moved by the replica: nothing written by the statement, then the head taken.
    replica.record(entry(4)).await.unwrap();
    assert_eq!(
        put(5).await,
        (
            false,
            PrimaryUse {
                id: 1,
                encryptions: 8
            }
        )
    );
    assert_eq!(
        put(6).await,
        (
            true,
            PrimaryUse {
                id: 1,
                encryptions: 10
            }
        )
    );

    let report = orchestrator_audit::verify(db.pool(), &AuditKey::from_bytes(&[7; 32]))
        .await
        .unwrap();
    assert_eq!(report.broken, None);
    let targets: Vec<(String,)> = sqlx::query_as("SELECT target FROM audit_log ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let targets: Vec<String> = targets.into_iter().map(|(t,)| t).collect();
    assert_eq!(
        targets,
        (1..=6).map(|n| format!("target-{n}")).collect::<Vec<_>>()
    );
}

/// PostgreSQL: a version a rewrap re-encrypts while a Put's statement prunes it is pruned all
/// the same, and the answer says what the table holds. The statement's DELETE finds its rows
/// by ctid, and the rewrap's committed UPDATE moved this one: the CI once saw a key keep a
/// version more than it should, listed by the next call though the Put's answer left it out.
#[tokio::test]
async fn a_version_rewrapped_while_a_put_prunes_it_is_pruned_all_the_same() {
    let test_db = TestDatabase::postgres(&["vault"]).await;
    let (db, _ledger) = open(&test_db).await;
    let mut conn = db.pool().acquire().await.unwrap();
    seed(&mut conn, "u", "k", 2).await;
    let next = next_version(&mut conn, "u", "k", None, 30).await.unwrap();
    assert!(matches!(next, NextVersion::Taken { version: 3, .. }));
    // A rewrap's UPDATE of version 1, not yet committed.
    let mut rewrap = db.pool().begin().await.unwrap();
    sqlx::query("UPDATE user_vault SET encrypted_value = $1 WHERE user_id = 'u' AND key = 'k' AND version = 1")
        .bind(b"ct-rewrapped".to_vec())
        .execute(&mut *rewrap)
        .await
        .unwrap();
    // Version 3, keeping the newest 2: it prunes version 1, and waits for the rewrap's row.
    let storing = tokio::spawn(async move {
        let stored = store_one(
            &mut conn,
            Dialect::Postgres,
            row("u", "k", 3),
            b"ct-3",
            30,
            1,
        )
        .await;
        (stored, conn)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Put never waited for the row"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    rewrap.commit().await.unwrap();
    let (stored, mut conn) = storing.await.unwrap();
    assert_eq!(stored.pruned, [1]);
    let listed = |v: &[VersionRow]| v.iter().map(|v| v.version).collect::<Vec<_>>();
    assert_eq!(listed(&stored.versions), [3, 2]);
    assert_eq!(
        listed(&versions(&mut conn, "u", "k").await.unwrap()),
        [3, 2]
    );
}

#[test]
fn the_migrations_exist_for_both_dialects() {
    for dialect in [Dialect::Postgres, Dialect::Sqlite] {
        assert!(migrations(dialect).iter().all(|m| m.version >= 100));
    }
}

orchestrator_store::on_both_dialects!(
    "vault";
    versions_take_turns_by_check_and_set,
    a_stored_version_prunes_and_lists_as_the_table_says,
    deletes_change_the_rows_as_the_returned_metadata_says,
    put_requests_remember_what_they_wrote,
    lists_page_by_key_with_each_keys_versions,
    reads_bring_the_newest_audit_record_of_their_row,
    many_reads_share_one_statement_each_answered_as_if_alone,
    many_versions_store_in_one_statement_each_as_if_alone,
    a_key_repeated_in_one_call_takes_versions_in_turn,
    data_keys_rotate_rewrap_and_retire,
    data_keys_are_never_deleted_or_renumbered,
    grants_are_per_user_key_and_project_and_revocable,
);
