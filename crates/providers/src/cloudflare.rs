//! Cloudflare DNS (API v4): create-or-update of a project's A record (list by exact name, then
//! PATCH or POST), `proxied: false` because SSH does not pass Cloudflare's proxy.

use reqwest::Method;
use secrecy::SecretString;

use crate::http::{Answer, Credentials, Http, ProviderError, Retry};

const P: &str = "Cloudflare";

#[derive(Debug, Clone)]
pub struct Cloudflare {
    http: Http,
}

/// The first error of a v4 envelope, as `code: message`; 10000 is an authentication error.
fn error(answer: &Answer) -> ProviderError {
    let first = answer.body["errors"]
        .as_array()
        .and_then(|e| e.first())
        .cloned()
        .unwrap_or_default();
    let code = first["code"].as_i64().unwrap_or(0);
    let reason = format!("{code}: {}", first["message"].as_str().unwrap_or(""));
    match (answer.status.as_u16(), code) {
        (401 | 403, _) | (_, 10000) => ProviderError::Auth {
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

    async fn a_records(
        &self,
        zone_id: &str,
        name: &str,
    ) -> Result<Vec<serde_json::Value>, ProviderError> {
        let result = ok(self
            .http
            .send(
                Method::GET,
                &format!("/zones/{zone_id}/dns_records?type=A&name.exact={name}"),
                None,
                true,
            )
            .await?)?;
        Ok(result.as_array().cloned().unwrap_or_default())
    }

    /// Points `name` at `ipv4` (create or update); returns the record id.
    pub async fn upsert_a_record(
        &self,
        zone_id: &str,
        name: &str,
        ipv4: &str,
    ) -> Result<String, ProviderError> {
        let body = serde_json::json!({ "type": "A", "name": name, "content": ipv4, "ttl": 1, "proxied": false });
        for _ in 0..2 {
            if let Some(existing) = self.a_records(zone_id, name).await?.first() {
                let id = existing["id"].as_str().unwrap_or_default().to_owned();
                ok(self
                    .http
                    .send(
                        Method::PATCH,
                        &format!("/zones/{zone_id}/dns_records/{id}"),
                        Some(&body),
                        true,
                    )
                    .await?)?;
                return Ok(id);
            }
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
                Ok(created) => return Ok(created["id"].as_str().unwrap_or_default().to_owned()),
                // Created meanwhile (81053-style duplicate): list again and update it.
                Err(ProviderError::Status { reason, .. }) if reason.starts_with("8105") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError::Status {
            provider: P,
            status: 400,
            reason: format!("could not create or update the A record {name}"),
        })
    }

    /// Removes the A records of `name`; `false` when there was none.
    pub async fn delete_a_record(&self, zone_id: &str, name: &str) -> Result<bool, ProviderError> {
        let records = self.a_records(zone_id, name).await?;
        for record in &records {
            let id = record["id"].as_str().unwrap_or_default();
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
                Ok(_) => {}
                Err(ProviderError::Status { reason, .. }) if reason.starts_with("81044") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(!records.is_empty())
    }
}
