//! Requests checked at the edge into typed values: every violation of a request reported at
//! once (INVALID_ARGUMENT with a `BadRequest`), nothing past this point re-checks a field.

use orchestrator_fields::{Invalid, Page, ProjectId, UserId};
use orchestrator_proto::vault::v1 as pb;
use orchestrator_status::{At as _, Fields as _, Violations, checked};
use tonic::Status;
use zeroize::Zeroizing;

/// The largest value, in bytes.
const MAX_VALUE: usize = 65_536;
/// The most reads in one BatchGet.
const MAX_BATCH: usize = 100;
/// The most versions one DeleteUserSecret names (a key keeps far fewer: VAULT_KEEP_VERSIONS).
const MAX_DELETE_VERSIONS: usize = 100;
/// The longest Put request id, in bytes.
const MAX_REQUEST_ID: usize = 128;

/// A key name: 1-256 characters of `[A-Za-z0-9_.-/]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SecretKey(String);

impl SecretKey {
    pub(crate) const RULE: &'static str = "1-256 characters of [A-Za-z0-9_.-/]";

    pub(crate) fn parse(raw: &str) -> Result<Self, Invalid> {
        let valid = (1..=256).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'));
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid(Self::RULE))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which secret: one key of one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SecretName {
    pub(crate) user_id: UserId,
    pub(crate) key: SecretKey,
}

/// A version to read: `version` 0 is the newest live one, for `project` (`None`: the read
/// named none, and is refused for want of a grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretVersion {
    pub(crate) name: SecretName,
    pub(crate) version: i64,
    pub(crate) project: Option<ProjectId>,
}

/// One user's key for one project: a checked GrantUserSecret or RevokeUserSecretGrant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrantName {
    pub(crate) name: SecretName,
    pub(crate) project: ProjectId,
}

/// A checked PutUserSecret.
#[derive(Debug)]
pub(crate) struct PutSecret {
    /// The idempotency key, if the caller gave one.
    pub(crate) request_id: Option<String>,
    pub(crate) name: SecretName,
    /// Check-and-set: `None` unconditional, `Some(0)` create only, `Some(n)` only over version n.
    pub(crate) expected_version: Option<i64>,
    pub(crate) value: Zeroizing<Vec<u8>>,
}

/// A checked DeleteUserSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeleteSecret {
    pub(crate) name: SecretName,
    /// Empty: every kept version.
    pub(crate) versions: Vec<i64>,
    pub(crate) destroy: bool,
}

/// A checked ListUserSecrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListSecrets {
    pub(crate) user_id: UserId,
    /// Keyset paging on the key (arity 1).
    pub(crate) page: Page,
    pub(crate) show_deleted: bool,
}

pub(crate) fn put(mut req: pb::PutUserSecretRequest) -> Result<PutSecret, Status> {
    // Zeroized when dropped, refused or not.
    let value = Zeroizing::new(std::mem::take(&mut req.value));
    let value_ok = (1..=MAX_VALUE).contains(&value.len());
    let request_id_ok = req.request_id.len() <= MAX_REQUEST_ID;
    let (user_id, key, value, expected_version, request_id) = Violations::new().collect((
        UserId::parse(&req.user_id).at("user_id"),
        SecretKey::parse(&req.key).at("key"),
        checked(value, value_ok, "value", "1-65,536 bytes"),
        checked(
            req.expected_version,
            req.expected_version.is_none_or(|n| n >= 0),
            "expected_version",
            "must not be negative",
        ),
        // As lenient as the vault has always been (any text up to 128 bytes), not
        // `RequestId::optional` (printable ASCII only), which would refuse ids accepted today.
        checked(
            Some(req.request_id).filter(|id| !id.is_empty()),
            request_id_ok,
            "request_id",
            "at most 128 characters",
        ),
    ))?;
    Ok(PutSecret {
        request_id,
        name: SecretName { user_id, key },
        expected_version,
        value,
    })
}

/// One read of GetUserSecret or BatchGetUserSecrets, its fields named after `prefix`.
fn read(
    v: &mut Violations,
    prefix: &str,
    user_id: &str,
    key: &str,
    version: i64,
    project_id: &str,
) -> Option<SecretVersion> {
    let (user_id, key, version, project) = (
        UserId::parse(user_id).at(format!("{prefix}user_id")),
        SecretKey::parse(key).at(format!("{prefix}key")),
        checked(
            version,
            version >= 0,
            format!("{prefix}version"),
            "must not be negative",
        ),
        // Empty is not malformed: it is a read for no project, refused as GRANT_MISSING.
        optional_project(project_id).at(format!("{prefix}project_id")),
    )
        .split(v)?;
    Some(SecretVersion {
        name: SecretName { user_id, key },
        version,
        project,
    })
}

fn optional_project(raw: &str) -> Result<Option<ProjectId>, Invalid> {
    if raw.is_empty() {
        Ok(None)
    } else {
        ProjectId::parse(raw).map(Some)
    }
}

pub(crate) fn get(req: &pb::GetUserSecretRequest) -> Result<SecretVersion, Status> {
    let mut v = Violations::new();
    let wanted = read(
        &mut v,
        "",
        &req.user_id,
        &req.key,
        req.version,
        &req.project_id,
    );
    v.finish_with(wanted)
}

/// A GrantUserSecret or RevokeUserSecretGrant: the user, the key and the project, all required.
pub(crate) fn grant(user_id: &str, key: &str, project_id: &str) -> Result<GrantName, Status> {
    let (user_id, key, project) = Violations::new().collect((
        UserId::parse(user_id).at("user_id"),
        SecretKey::parse(key).at("key"),
        ProjectId::parse(project_id).at("project_id"),
    ))?;
    Ok(GrantName {
        name: SecretName { user_id, key },
        project,
    })
}

pub(crate) fn batch_get(
    req: &pb::BatchGetUserSecretsRequest,
) -> Result<Vec<SecretVersion>, Status> {
    let mut v = Violations::new();
    if !v.count(req.requests.len(), 1..=MAX_BATCH, "requests") {
        return v.finish_with(None);
    }
    let mut wanted = Vec::with_capacity(req.requests.len().min(MAX_BATCH));
    for (i, r) in req.requests.iter().enumerate() {
        let one = read(
            &mut v,
            &format!("requests[{i}]."),
            &r.user_id,
            &r.key,
            r.version,
            &r.project_id,
        );
        // Once anything is wrong the values are not needed, only the violations.
        if let Some(one) = one.filter(|_| v.is_empty()) {
            wanted.push(one);
        }
    }
    v.finish_with(Some(wanted))
}

pub(crate) fn list(req: &pb::ListUserSecretsRequest) -> Result<ListSecrets, Status> {
    let (user_id, page) = Violations::new().collect((
        UserId::parse(&req.user_id).at("user_id"),
        Page::parse(req.page_size, &req.page_token, 1),
    ))?;
    Ok(ListSecrets {
        user_id,
        page,
        show_deleted: req.show_deleted,
    })
}

pub(crate) fn delete(req: pb::DeleteUserSecretRequest) -> Result<DeleteSecret, Status> {
    let mut v = Violations::new();
    let name = (
        UserId::parse(&req.user_id).at("user_id"),
        SecretKey::parse(&req.key).at("key"),
    )
        .split(&mut v);
    if v.count(req.versions.len(), 0..=MAX_DELETE_VERSIONS, "versions") {
        for (i, version) in req.versions.iter().enumerate() {
            v.check(*version > 0, format!("versions[{i}]"), "must be positive");
        }
    }
    let (user_id, key) = v.finish_with(name)?;
    Ok(DeleteSecret {
        name: SecretName { user_id, key },
        versions: req.versions,
        destroy: req.destroy,
    })
}

/// RotateDataKey's optional check of the current primary data key id (compared as text).
pub(crate) fn rotate(req: pb::RotateDataKeyRequest) -> Option<String> {
    Some(req.expected_primary_key_id).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields an INVALID_ARGUMENT names, in order.
    fn fields(status: Status) -> Vec<String> {
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status
            .message()
            .split("; ")
            .map(|v| v.split_once(": ").map_or(v, |(f, _)| f).to_owned())
            .collect()
    }

    fn put_req(user_id: &str, key: &str, value: &[u8]) -> pb::PutUserSecretRequest {
        pb::PutUserSecretRequest {
            user_id: user_id.into(),
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn key_names_follow_their_rule() {
        for good in ["do/token", "a", "A-Z_0.9", &"k".repeat(256)] {
            assert_eq!(SecretKey::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "has space", "ü", "a:b", &"k".repeat(257)] {
            assert_eq!(
                SecretKey::parse(bad),
                Err(Invalid(SecretKey::RULE)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_put_is_typed_and_an_empty_request_id_is_none() {
        let put = put(put_req("u1@example.com", "do/token", b"v")).unwrap();
        assert_eq!(put.name.user_id.as_str(), "u1@example.com");
        assert_eq!(put.name.key.as_str(), "do/token");
        assert_eq!(&put.value[..], b"v");
        assert_eq!((put.request_id, put.expected_version), (None, None));
    }

    #[test]
    fn a_bad_put_names_every_field_in_order_and_never_the_value() {
        let mut req = put_req("u 1", "", &[]);
        req.expected_version = Some(-1);
        req.request_id = "r".repeat(129);
        let status = super::put(req).unwrap_err();
        assert!(
            status.message().contains("1-65,536 bytes"),
            "{}",
            status.message()
        );
        assert_eq!(
            fields(status),
            ["user_id", "key", "value", "expected_version", "request_id"]
        );
        let canary = super::put(put_req("u 1", "k", b"canary-value")).unwrap_err();
        assert!(!canary.message().contains("canary"));
        assert!(super::put(put_req("u", "k", &vec![0; MAX_VALUE + 1])).is_err());
    }

    #[test]
    fn put_request_ids_are_as_lenient_as_before() {
        for id in ["put-1", "with space", "ünïcode", &"r".repeat(128)] {
            let mut req = put_req("u", "k", b"v");
            req.request_id = id.to_owned();
            assert_eq!(super::put(req).unwrap().request_id.as_deref(), Some(id));
        }
    }

    #[test]
    fn reads_are_checked_per_request() {
        let wanted = get(&pb::GetUserSecretRequest {
            user_id: "u".into(),
            key: "k".into(),
            version: 0,
            project_id: "prj-1".into(),
        })
        .unwrap();
        assert_eq!((wanted.name.key.as_str(), wanted.version), ("k", 0));
        assert_eq!(wanted.project.unwrap().as_str(), "prj-1");
        let bad = get(&pb::GetUserSecretRequest {
            version: -1,
            project_id: "prj 1".into(),
            ..Default::default()
        });
        assert_eq!(
            fields(bad.unwrap_err()),
            ["user_id", "key", "version", "project_id"]
        );

        let one = |user_id: &str, version| pb::GetUserSecretRequest {
            user_id: user_id.into(),
            key: "k".into(),
            version,
            project_id: String::new(),
        };
        let batch = |requests| pb::BatchGetUserSecretsRequest { requests };
        let ok = batch_get(&batch(vec![one("a", 0), one("b", 2)])).unwrap();
        assert_eq!(ok.len(), 2);
        // No project is not malformed: the read is refused later, for want of a grant.
        assert!(ok.iter().all(|r| r.project.is_none()));
        assert_eq!(ok[1].name.user_id.as_str(), "b");
        let bad = batch_get(&batch(vec![one("a", 0), one("", -1)])).unwrap_err();
        assert_eq!(fields(bad), ["requests[1].user_id", "requests[1].version"]);
        assert_eq!(fields(batch_get(&batch(vec![])).unwrap_err()), ["requests"]);
        let too_many = batch_get(&batch(vec![one("a", 0); MAX_BATCH + 1])).unwrap_err();
        assert_eq!(fields(too_many), ["requests"]);
    }

    #[test]
    fn a_grant_names_a_user_a_key_and_a_project() {
        let ok = grant("u1", "do/token", "prj-1").unwrap();
        assert_eq!(
            (
                ok.name.user_id.as_str(),
                ok.name.key.as_str(),
                ok.project.as_str()
            ),
            ("u1", "do/token", "prj-1")
        );
        assert_eq!(
            fields(grant("", "a b", "").unwrap_err()),
            ["user_id", "key", "project_id"]
        );
        assert_eq!(
            fields(grant("u1", "k", "prj/1").unwrap_err()),
            ["project_id"]
        );
    }

    #[test]
    fn lists_page_with_the_shared_token() {
        let req = |page_size, page_token: &str| pb::ListUserSecretsRequest {
            user_id: "u".into(),
            page_size,
            page_token: page_token.into(),
            show_deleted: true,
        };
        let first = list(&req(0, "")).unwrap();
        assert_eq!(first.page.size(), orchestrator_fields::DEFAULT_PAGE_SIZE);
        assert!(first.page.after().is_none() && first.show_deleted);
        let mut keys = vec!["a", "b"];
        let token = Page::parse(1, "", 1)
            .unwrap()
            .finish(&mut keys, |k| vec![(*k).to_owned()]);
        assert_eq!(
            list(&req(1, &token)).unwrap().page.after(),
            Some(&["a".to_owned()][..])
        );
        assert_eq!(fields(list(&req(-1, "")).unwrap_err()), ["page_size"]);
        assert_eq!(
            fields(list(&req(1, "not-ours")).unwrap_err()),
            ["page_token"]
        );
        let mut no_user = req(0, "");
        no_user.user_id.clear();
        assert_eq!(fields(list(&no_user).unwrap_err()), ["user_id"]);
    }

    #[test]
    fn deletes_need_positive_versions() {
        let req = |versions| pb::DeleteUserSecretRequest {
            user_id: "u".into(),
            key: "k".into(),
            versions,
            destroy: true,
        };
        let ok = delete(req(vec![1, 3])).unwrap();
        assert_eq!((ok.versions, ok.destroy), (vec![1, 3], true));
        assert!(delete(req(vec![])).unwrap().versions.is_empty());
        let mut bad = req(vec![0, 2, -1]);
        bad.key = "a b".into();
        assert_eq!(
            fields(delete(bad).unwrap_err()),
            ["key", "versions[0]", "versions[2]"]
        );
        // Millions of versions are refused on their count, without a look at each one.
        let huge = delete(req(vec![0; 3_000_000])).unwrap_err();
        assert_eq!(fields(huge.clone()), ["versions"]);
        assert!(huge.message().contains("got 3000000"), "{}", huge.message());
    }

    #[test]
    fn an_empty_expected_primary_is_no_check() {
        let req = |id: &str| pb::RotateDataKeyRequest {
            expected_primary_key_id: id.into(),
        };
        assert_eq!(rotate(req("")), None);
        assert_eq!(rotate(req("2")).as_deref(), Some("2"));
    }
}
