//! Cloudflare DNS (API v4): a server's A record, marked with a comment naming the server
//! ([`owner_comment`]); a name with any record without that comment is someone else's and is
//! never written ([`Claim::Taken`]). Updates and deletes go by record id only. `proxied:
//! false` because SSH does not pass Cloudflare's proxy.

use reqwest::Method;
use secrecy::SecretString;

use crate::http::{Answer, Credentials, Http, ProviderError, Retry};

const P: &str = "Cloudflare";

#[derive(Debug, Clone)]
pub struct Cloudflare {
    http: Http,
}

/// The first error of a v4 envelope, as `code: message`; 10000 (a token Cloudflare does not
/// know) and 6003 (a malformed header or token, 6111 in its chain) are authentication errors.
fn error(answer: &Answer) -> ProviderError {
    let first = answer.body["errors"]
        .as_array()
        .and_then(|e| e.first())
        .cloned()
        .unwrap_or_default();
    let code = first["code"].as_i64().unwrap_or(0);
    let reason = format!("{code}: {}", first["message"].as_str().unwrap_or(""));
    match (answer.status.as_u16(), code) {
        (401 | 403, _) | (_, 10000 | 6003) => ProviderError::Auth {
            provider: P,
            reason,
        },
        (status, _) => ProviderError::Status {
            provider: P,
            status,
            reason,
        },
    }
}

fn ok(answer: Answer) -> Result<serde_json::Value, ProviderError> {
    if answer.status.is_success() && answer.body["success"].as_bool() == Some(true) {
        Ok(answer.body["result"].clone())
    } else {
        Err(error(&answer))
    }
}

impl Cloudflare {
    /// `base`: `https://api.cloudflare.com/client/v4` (`CLOUDFLARE_API_URL`) or an emulator.
    pub fn new(base: &str, token: SecretString, retry: Retry) -> Result<Self, ProviderError> {
        Ok(Self {
            http: Http::new(P, base, Credentials::Bearer(token), retry)?,
        })
    }

    pub async fn zone_id(&self, zone: &str) -> Result<String, ProviderError> {
        let result = ok(self
            .http
            .send(Method::GET, &format!("/zones?name={zone}"), None, true)
            .await?)?;
        result
            .as_array()
            .and_then(|z| z.first())
            .and_then(|z| z["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Status {
                provider: P,
                status: 404,
                reason: format!("no zone `{zone}` for this token"),
            })
    }

    /// Every record of exactly `name` (any type), with its comment.
    pub async fn records_named(
        &self,
        zone_id: &str,
        name: &str,
    ) -> Result<Vec<DnsRecord>, ProviderError> {
        let result = ok(self
            .http
            .send(
                Method::GET,
                &format!("/zones/{zone_id}/dns_records?name.exact={name}&per_page=100"),
                None,
                true,
            )
            .await?)?;
        let records = result.as_array().cloned().unwrap_or_default();
        records.iter().map(DnsRecord::from_json).collect()
    }

    /// Who holds `name`: nobody, `owner` (an A record with that comment and nothing else of
    /// that name), or someone else (any record without that comment).
    pub async fn name_state(
        &self,
        zone_id: &str,
        name: &str,
        owner: &str,
    ) -> Result<NameState, ProviderError> {
        let records = self.records_named(zone_id, name).await?;
        if let Some(foreign) = records.iter().find(|r| !r.is_owned_by(owner)) {
            return Ok(NameState::Taken(foreign.clone()));
        }
        Ok(match records.into_iter().find(|r| r.type_ == "A") {
            Some(ours) => NameState::Ours(ours),
            None => NameState::Free,
        })
    }

    /// Points `name` at `ipv4` with a record marked with the `owner` comment: created when
    /// the name is free, updated (by id) when it is `owner`'s already, never touched when any
    /// record of that name is someone else's ([`Claim::Taken`]). Returns the record id.
    pub async fn claim_a_record(
        &self,
        zone_id: &str,
        name: &str,
        ipv4: &str,
        owner: &str,
    ) -> Result<Claim, ProviderError> {
        for _ in 0..3 {
            match self.name_state(zone_id, name, owner).await? {
                NameState::Taken(foreign) => return Ok(Claim::Taken(foreign)),
                NameState::Ours(ours) => {
                    if ours.content != ipv4 {
                        self.point_a_record(zone_id, &ours.id, ipv4).await?;
                    }
                    return Ok(Claim::Ours(ours.id));
                }
                NameState::Free => {}
            }
            let body = serde_json::json!({
                "type": "A", "name": name, "content": ipv4, "ttl": 1, "proxied": false,
                "comment": owner,
            });
            // A create is not retried blindly: a lost answer is found by its comment above.
            match ok(self
                .http
                .send(
                    Method::POST,
                    &format!("/zones/{zone_id}/dns_records"),
                    Some(&body),
                    false,
                )
                .await?)
            {
                Ok(created) => return Ok(Claim::Ours(DnsRecord::from_json(&created)?.id)),
                // Created meanwhile (81053/81058), by whoever: look again.
                Err(ProviderError::Status { reason, .. }) if reason.starts_with("8105") => {}
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError::Status {
            provider: P,
            status: 400,
            reason: format!("could not create or update the A record {name}"),
        })
    }

    /// Points record `id` (an A record) at `ipv4`; nothing else of it changes.
    pub async fn point_a_record(
        &self,
        zone_id: &str,
        id: &str,
        ipv4: &str,
    ) -> Result<(), ProviderError> {
        let body = serde_json::json!({ "content": ipv4 });
        ok(self
            .http
            .send(
                Method::PATCH,
                &format!("/zones/{zone_id}/dns_records/{id}"),
                Some(&body),
                true,
            )
            .await?)?;
        Ok(())
    }

    /// `owner`'s A record of `name`, if there is one (found by its comment).
    pub async fn find_owned(
        &self,
        zone_id: &str,
        name: &str,
        owner: &str,
    ) -> Result<Option<DnsRecord>, ProviderError> {
        Ok(self
            .records_named(zone_id, name)
            .await?
            .into_iter()
            .find(|r| r.type_ == "A" && r.is_owned_by(owner)))
    }

    /// Removes record `id` and nothing else; `false` when it was gone already.
    pub async fn delete_record(&self, zone_id: &str, id: &str) -> Result<bool, ProviderError> {
        match ok(self
            .http
            .send(
                Method::DELETE,
                &format!("/zones/{zone_id}/dns_records/{id}"),
                None,
                true,
            )
            .await?)
        {
            Ok(_) => Ok(true),
            Err(ProviderError::Status { reason, .. }) if reason.starts_with("81044") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The comment infra writes on every record it creates: whose record it is (one server's).
/// A comment, not a tag: tags are a paid-plan feature, comments exist on every plan (at most
/// 100 characters on Free; this is about 40).
pub fn owner_comment(server_id: &str) -> String {
    format!("{OWNER_PREFIX}{server_id}")
}

const OWNER_PREFIX: &str = "orchestrator server ";

/// A DNS record as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    pub id: String,
    /// `A`, `AAAA`, `CNAME`, `TXT`, ...
    pub type_: String,
    pub name: String,
    pub content: String,
    pub comment: Option<String>,
}

impl DnsRecord {
    fn from_json(v: &serde_json::Value) -> Result<Self, ProviderError> {
        let text = |field: &str| v[field].as_str().map(str::to_owned);
        let id = text("id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ProviderError::Decode {
                provider: P,
                reason: "a DNS record without an id".to_owned(),
            })?;
        Ok(Self {
            id,
            type_: text("type").unwrap_or_default(),
            name: text("name").unwrap_or_default(),
            content: text("content").unwrap_or_default(),
            comment: text("comment").filter(|c| !c.is_empty()),
        })
    }

    /// Whether this record carries `owner`'s comment.
    pub fn is_owned_by(&self, owner: &str) -> bool {
        self.comment.as_deref() == Some(owner)
    }

    /// Whether this record carries the comment of some orchestrator server.
    pub fn is_marked_by_orchestrator(&self) -> bool {
        self.comment
            .as_deref()
            .is_some_and(|c| c.starts_with(OWNER_PREFIX))
    }
}

/// Who holds a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameState {
    /// No record of that name.
    Free,
    /// Only the owner's A record.
    Ours(DnsRecord),
    /// A record someone else made (the first one found).
    Taken(DnsRecord),
}

/// What [`Cloudflare::claim_a_record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The owner's record (created or updated), by id.
    Ours(String),
    /// Someone else's record holds the name; nothing was written.
    Taken(DnsRecord),
}
