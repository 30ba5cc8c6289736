//! DigitalOcean API v2. No idempotency key exists, so a deterministic tag is one: list by tag
//! before any create and after any failed create; a create itself is never retried blindly.

use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::SecretString;
use serde::Deserialize;

use crate::http::{Answer, Credentials, Http, ProviderError, Retry};

const P: &str = "DigitalOcean";

#[derive(Debug, Clone)]
pub struct DigitalOcean {
    http: Http,
}

/// The most pages of 200 droplets one listing reads.
const MAX_PAGES: usize = 50;

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateDroplet {
    pub name: String,
    pub region: String,
    pub size: String,
    pub image: String,
    /// The idempotency tag (deterministic per operation).
    pub tag: String,
    /// cloud-init user data (plain text, <= 64 KiB). Never an application secret.
    pub user_data: String,
    /// SSH key ids or fingerprints installed for root.
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub public_ipv4: Option<String>,
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct DropletBody {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    networks: Networks,
}

#[derive(Deserialize, Default)]
struct Networks {
    #[serde(default)]
    v4: Option<Vec<V4>>,
}

#[derive(Deserialize)]
struct V4 {
    ip_address: String,
    #[serde(rename = "type")]
    kind: String,
}

impl From<DropletBody> for Droplet {
    fn from(d: DropletBody) -> Self {
        let public_ipv4 = d
            .networks
            .v4
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.kind == "public")
            .map(|n| n.ip_address);
        Droplet {
            id: d.id,
            name: d.name,
            status: d.status,
            public_ipv4,
            tags: d.tags.unwrap_or_default(),
        }
    }
}

fn error(answer: &Answer) -> ProviderError {
    let reason = answer
        .body
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_owned();
    match answer.status.as_u16() {
        401 | 403 => ProviderError::Auth {
            provider: P,
            reason,
        },
        status => ProviderError::Status {
            provider: P,
            status,
            reason,
        },
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T, ProviderError> {
    serde_json::from_value(value.clone()).map_err(|e| ProviderError::Decode {
        provider: P,
        reason: e.to_string(),
    })
}

impl DigitalOcean {
    /// `base`: `https://api.digitalocean.com` (`DIGITALOCEAN_API_URL`) or an emulator.
    pub fn new(base: &str, token: SecretString, retry: Retry) -> Result<Self, ProviderError> {
        Ok(Self {
            http: Http::new(P, base, Credentials::Bearer(token), retry)?,
        })
    }

    /// Droplets carrying `tag` (all pages, at most `MAX_PAGES`: an answer that claims more
    /// droplets than it ever lists must not keep infra paging forever).
    pub async fn droplets_by_tag(&self, tag: &str) -> Result<Vec<Droplet>, ProviderError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let answer = self
                .http
                .send(
                    Method::GET,
                    &format!("/v2/droplets?tag_name={tag}&per_page=200&page={page}"),
                    None,
                    true,
                )
                .await?;
            if !answer.status.is_success() {
                return Err(error(&answer));
            }
            let droplets: Vec<DropletBody> = decode(&answer.body["droplets"])?;
            let n = droplets.len();
            all.extend(droplets.into_iter().map(Droplet::from));
            let total = answer.body["meta"]["total"].as_u64().unwrap_or(0);
            if n == 0 || all.len() as u64 >= total {
                return Ok(all);
            }
        }
        Err(ProviderError::Decode {
            provider: P,
            reason: format!("more than {MAX_PAGES} pages of droplets tagged {tag}"),
        })
    }

    /// Creates the droplet unless one with its tag exists. Retries never duplicate: after a
    /// failed create, the tag is listed again before anything else happens.
    pub async fn create_droplet(&self, spec: &CreateDroplet) -> Result<Droplet, ProviderError> {
        if let Some(existing) = self.droplets_by_tag(&spec.tag).await?.into_iter().next() {
            return Ok(existing);
        }
        let body = serde_json::json!({
            "name": spec.name, "region": spec.region, "size": spec.size, "image": spec.image,
            "tags": [spec.tag], "user_data": spec.user_data, "ssh_keys": spec.ssh_keys,
            "ipv6": false, "monitoring": true,
        });
        match self
            .http
            .send(Method::POST, "/v2/droplets", Some(&body), false)
            .await
        {
            Ok(answer) if answer.status.is_success() => {
                Ok(decode::<DropletBody>(&answer.body["droplet"])?.into())
            }
            Ok(answer) if answer.status.is_client_error() => Err(error(&answer)),
            // 5xx, 429 or no answer: it may or may not exist now. Look before anything else.
            Ok(_) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match self.droplets_by_tag(&spec.tag).await?.into_iter().next() {
                    Some(created) => Ok(created),
                    None => Err(ProviderError::Unavailable {
                        provider: P,
                        reason: "the create failed and no droplet carries its tag".into(),
                    }),
                }
            }
        }
    }

    /// One droplet, or `None` for 404.
    pub async fn droplet(&self, id: u64) -> Result<Option<Droplet>, ProviderError> {
        let answer = self
            .http
            .send(Method::GET, &format!("/v2/droplets/{id}"), None, true)
            .await?;
        match answer.status.as_u16() {
            404 => Ok(None),
            s if (200..300).contains(&s) => {
                Ok(Some(decode::<DropletBody>(&answer.body["droplet"])?.into()))
            }
            _ => Err(error(&answer)),
        }
    }

    /// Polls until the droplet is active **and** has a public IPv4 (it can report `active`
    /// first); a 404 right after creation can be transient and is tolerated for a while.
    pub async fn wait_for_address(
        &self,
        id: u64,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Droplet, ProviderError> {
        let started = Instant::now();
        loop {
            match self.droplet(id).await? {
                Some(d) if d.status == "active" && d.public_ipv4.is_some() => return Ok(d),
                Some(_) => {}
                None if started.elapsed() > Duration::from_secs(30).min(timeout) => {
                    return Err(ProviderError::Status {
                        provider: P,
                        status: 404,
                        reason: format!("droplet {id} disappeared"),
                    });
                }
                None => {}
            }
            if started.elapsed() > timeout {
                return Err(ProviderError::Unavailable {
                    provider: P,
                    reason: format!("droplet {id} has no public address after {timeout:?}"),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Deletes a droplet; `false` when it was already gone (404).
    pub async fn delete_droplet(&self, id: u64) -> Result<bool, ProviderError> {
        let started = std::time::Instant::now();
        let mut wait = self.http.retry.base_backoff;
        loop {
            let answer = self
                .http
                .send(Method::DELETE, &format!("/v2/droplets/{id}"), None, true)
                .await?;
            match answer.status.as_u16() {
                404 => return Ok(false),
                s if (200..300).contains(&s) => return Ok(true),
                // Right after a create (or any action) DigitalOcean refuses the delete with 422
                // "Droplet already has a pending event": wait for the action, then again.
                422 if pending_event(&answer) => {
                    if started.elapsed().saturating_add(wait) > self.http.retry.deadline {
                        return Err(ProviderError::Unavailable {
                            provider: P,
                            reason: format!("droplet {id} still has a pending event"),
                        });
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                _ => return Err(error(&answer)),
            }
        }
    }

    /// Registers an account SSH key, or finds it if it is already registered (DigitalOcean
    /// answers 422 for a duplicate). Returns its id.
    pub async fn ensure_ssh_key(&self, name: &str, public_key: &str) -> Result<u64, ProviderError> {
        let body = serde_json::json!({ "name": name, "public_key": public_key });
        let answer = self
            .http
            .send(Method::POST, "/v2/account/keys", Some(&body), false)
            .await?;
        if answer.status.is_success() {
            return answer.body["ssh_key"]["id"]
                .as_u64()
                .ok_or_else(|| ProviderError::Decode {
                    provider: P,
                    reason: "ssh_key.id".into(),
                });
        }
        if answer.status.as_u16() != 422 {
            return Err(error(&answer));
        }
        let listed = self
            .http
            .send(Method::GET, "/v2/account/keys?per_page=200", None, true)
            .await?;
        if !listed.status.is_success() {
            return Err(error(&listed));
        }
        let wanted = public_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        listed.body["ssh_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| {
                k["public_key"].as_str().is_some_and(|p| {
                    p.split_whitespace().take(2).collect::<Vec<_>>().join(" ") == wanted
                })
            })
            .and_then(|k| k["id"].as_u64())
            .ok_or_else(|| error(&answer))
    }
}

/// A 422 that means "an action is still running on it", not a refusal of the request.
fn pending_event(answer: &Answer) -> bool {
    answer.body["message"]
        .as_str()
        .is_some_and(|m| m.to_ascii_lowercase().contains("pending event"))
}
