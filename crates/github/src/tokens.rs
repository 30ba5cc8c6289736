//! Installation tokens over their life: minted narrowed to repositories and permissions,
//! cached for the broker's own use until five minutes before they expire, replaced once when
//! GitHub refuses a cached one (401: revoked, or expired early), and revoked by whoever holds
//! one as soon as its job is done (`DELETE /installation/token`, authenticated by the token
//! itself, so no other credential is needed).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use secrecy::{ExposeSecret as _, SecretString};

use crate::client::{Auth, GitHub, GitHubError, InstallationToken, TokenBody, TokenKey, now_unix};

fn digest(token: &SecretString) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.expose_secret().as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl GitHub {
    /// An installation token narrowed to `repositories` and `permissions`, reused until five
    /// minutes before it expires. Returns whether it was minted now.
    pub async fn token(
        &self,
        installation: u64,
        repositories: &[&str],
        permissions: &[(&str, &str)],
    ) -> Result<(Arc<InstallationToken>, bool), GitHubError> {
        let mut repos: Vec<String> = repositories.iter().map(|r| (*r).to_owned()).collect();
        repos.sort();
        let perms: BTreeMap<String, String> = permissions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.token_for((installation, repos, perms)).await
    }

    async fn token_for(
        &self,
        key: TokenKey,
    ) -> Result<(Arc<InstallationToken>, bool), GitHubError> {
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(cached) = cached.filter(|t| t.expires_at - 300 > now_unix()) {
            return Ok((cached, false));
        }
        let token = Arc::new(self.mint(&key).await?);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, token.clone());
        Ok((token, true))
    }

    /// A new token from GitHub for `key`, cached nowhere.
    async fn mint(&self, key: &TokenKey) -> Result<InstallationToken, GitHubError> {
        let (installation, repos, perms) = key;
        let mut body = serde_json::json!({ "permissions": perms });
        if !repos.is_empty() {
            body["repositories"] = serde_json::json!(repos);
        }
        let path = format!("/app/installations/{installation}/access_tokens");
        let minted: TokenBody = self
            .json(Method::POST, &path, Auth::App, Some(body))
            .await?;
        let expires_at = time::OffsetDateTime::parse(
            &minted.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| GitHubError::BadAnswer(format!("expires_at: {e}")))?
        .unix_timestamp();
        Ok(InstallationToken {
            token: SecretString::from(minted.token),
            expires_at,
            permissions: minted.permissions,
            repositories: minted.repositories.into_iter().map(|r| r.name).collect(),
        })
    }

    /// A freshly minted token, neither cached nor served from the cache: it is handed to
    /// another service, which revokes it when its job is done, so no two callers may ever
    /// share one (one's revocation would end the other's job).
    pub async fn mint_uncached(
        &self,
        installation: u64,
        repositories: &[&str],
        permissions: &[(&str, &str)],
    ) -> Result<InstallationToken, GitHubError> {
        let mut repos: Vec<String> = repositories.iter().map(|r| (*r).to_owned()).collect();
        repos.sort();
        let perms: BTreeMap<String, String> = permissions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.mint(&(installation, repos, perms)).await
    }

    /// The token to use instead of `old`, which GitHub refused with a 401: when `old` is (or
    /// was) one of this client's cached tokens, it is dropped and a new one minted for the same
    /// installation, repositories and permissions (one mint however many holders ask); `None`
    /// for a token this client did not cache (a minted one handed over, or the caller's own).
    pub(crate) async fn replacement(
        &self,
        old: &SecretString,
    ) -> Result<Option<Arc<InstallationToken>>, GitHubError> {
        let id = digest(old);
        let now = now_unix();
        let dropped = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            let key = tokens
                .iter()
                .find(|(_, t)| t.token.expose_secret() == old.expose_secret())
                .map(|(k, t)| (k.clone(), t.expires_at));
            if let Some((key, _)) = &key {
                tokens.remove(key);
            }
            key
        };
        let key = {
            let mut superseded = self.superseded.lock().unwrap_or_else(|p| p.into_inner());
            superseded.retain(|_, (_, expires_at)| *expires_at > now);
            if let Some((key, expires_at)) = dropped {
                superseded.insert(id, (key, expires_at));
            }
            superseded.get(&id).map(|(key, _)| key.clone())
        };
        let Some(key) = key else {
            return Ok(None);
        };
        tracing::warn!(
            installation = key.0,
            "GitHub refused a cached installation token (revoked or expired early): minting a new one"
        );
        // Boxed: minting sends a request, which may itself need a replacement.
        let (fresh, _) = Box::pin(self.token_for(key)).await?;
        Ok(Some(fresh))
    }

    /// Revokes `token` at GitHub (`DELETE /installation/token`, authenticated with the token
    /// itself: whoever holds a token can end it). `true` when it was revoked now, `false` when
    /// GitHub no longer knew it (revoked before, or expired). Dropped from the cache either way.
    pub async fn revoke_token(&self, token: &SecretString) -> Result<bool, GitHubError> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, t| t.token.expose_secret() != token.expose_secret());
        // Not `send_ok`: a refused token is not to be replaced here, it is what was asked.
        let (status, _, _) = self
            .send(
                Method::DELETE,
                "/installation/token",
                Auth::Token(token),
                None,
            )
            .await?;
        match status.as_u16() {
            204 | 200 => Ok(true),
            401 => Ok(false),
            other => Err(GitHubError::Status {
                status: other,
                message: "revoking the installation token failed".to_owned(),
            }),
        }
    }
}
