//! The tokens this process minted, by the caller's request id, so that a retried
//! MintRepositoryToken (its answer lost in flight) leaves at most one live token: the retry
//! revokes the token the first attempt minted before answering a new one.
//!
//! Why revoke and re-mint rather than answer the same token again: a caller that did get the
//! first answer has revoked that token when its job ended, so repeating it could hand out a dead
//! token; revoking one that is already revoked costs nothing.
//!
//! Kept in memory only (a token is never stored), bounded, each entry dropped once its token
//! has expired. What a crash of this process forgets was never handed to anyone, or was and is
//! revoked by its holder after its job; either way GitHub expires it within the hour.

use std::collections::HashMap;
use std::sync::Mutex;

use orchestrator_fields::RequestId;
use secrecy::SecretString;

use crate::validate::TokenScope;

/// How many request ids are remembered at once. Callers mint a handful of tokens per project
/// and server operation; past this, the entries closest to expiry are forgotten first.
pub(crate) const CAPACITY: usize = 4096;

/// One minted token, remembered for its request id.
#[derive(Debug)]
struct Minted {
    scope: TokenScope,
    token: SecretString,
    /// Unix seconds.
    expires_at: i64,
}

/// The caller (its SPIFFE id) and its request id: ids are the caller's own namespace.
type Key = (String, RequestId);

/// The request id was used before, by the same caller, for another scope or project.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reused;

#[derive(Debug, Default)]
pub(crate) struct MintedTokens {
    by_request: Mutex<HashMap<Key, Minted>>,
}

impl MintedTokens {
    /// Forgets what `caller` minted earlier under `request_id` and hands back its token, to be
    /// revoked before the new one is minted; `Reused` when that earlier request asked for
    /// something else (the earlier entry stays).
    pub(crate) fn take(
        &self,
        caller: &str,
        request_id: &RequestId,
        scope: &TokenScope,
    ) -> Result<Option<SecretString>, Reused> {
        let mut map = self.lock();
        let key = (caller.to_owned(), request_id.clone());
        match map.get(&key) {
            None => Ok(None),
            Some(earlier) if earlier.scope != *scope => Err(Reused),
            Some(_) => Ok(map.remove(&key).map(|m| m.token)),
        }
    }

    /// Remembers `token`, minted for `caller`'s `request_id`, until `expires_at`. Hands back the
    /// token it replaces, if a concurrent attempt of the same request got there first: that one
    /// is to be revoked too, as only one answer reaches the caller.
    pub(crate) fn remember(
        &self,
        caller: &str,
        request_id: &RequestId,
        scope: TokenScope,
        token: SecretString,
        expires_at: i64,
        now: i64,
    ) -> Option<SecretString> {
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.retain(|_, m| m.expires_at > now);
        }
        while map.len() >= CAPACITY {
            // Bounded: forget the entry closest to expiry (its token stays live until then).
            let Some(soonest) = map
                .iter()
                .min_by_key(|(_, m)| m.expires_at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&soonest);
        }
        let minted = Minted {
            scope,
            token,
            expires_at,
        };
        map.insert((caller.to_owned(), request_id.clone()), minted)
            .map(|m| m.token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Minted>> {
        self.by_request.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn id(raw: &str) -> RequestId {
        RequestId::parse(raw).unwrap()
    }

    /// What `take` hands back, the token shown.
    fn taken(
        tokens: &MintedTokens,
        caller: &str,
        request_id: &str,
        scope: &TokenScope,
    ) -> Result<Option<String>, Reused> {
        tokens
            .take(caller, &id(request_id), scope)
            .map(|t| t.map(|t| t.expose_secret().to_owned()))
    }

    fn clone_scope(project: &str) -> TokenScope {
        TokenScope::Clone {
            project_id: project.parse().unwrap(),
        }
    }

    #[test]
    fn a_retry_takes_back_the_earlier_token_of_the_same_request_only() {
        let tokens = MintedTokens::default();
        let scope = clone_scope("prj-1");
        assert_eq!(taken(&tokens, "infra", "op-1", &scope), Ok(None));
        tokens.remember(
            "infra",
            &id("op-1"),
            scope.clone(),
            "ghs_first".into(),
            100,
            0,
        );

        // Another caller's id of the same spelling is another request.
        assert_eq!(taken(&tokens, "scaffolder", "op-1", &scope), Ok(None));
        // The same id for another project is refused, and the earlier token is kept.
        assert_eq!(
            taken(&tokens, "infra", "op-1", &clone_scope("prj-2")),
            Err(Reused)
        );
        assert_eq!(
            taken(&tokens, "infra", "op-1", &scope),
            Ok(Some("ghs_first".to_owned()))
        );
        assert_eq!(taken(&tokens, "infra", "op-1", &scope), Ok(None));
    }

    #[test]
    fn a_concurrent_attempt_hands_back_the_token_it_replaces() {
        let tokens = MintedTokens::default();
        let scope = clone_scope("prj-1");
        assert!(
            tokens
                .remember("infra", &id("op-1"), scope.clone(), "ghs_a".into(), 100, 0)
                .is_none()
        );
        let replaced = tokens
            .remember("infra", &id("op-1"), scope, "ghs_b".into(), 100, 0)
            .unwrap();
        assert_eq!(replaced.expose_secret(), "ghs_a");
    }

    #[test]
    fn bounded_expired_entries_go_first_then_those_closest_to_expiry() {
        let tokens = MintedTokens::default();
        let scope = clone_scope("prj-1");
        for n in 0..CAPACITY {
            let expires_at = if n == 7 { 10 } else { 1_000 + n as i64 };
            tokens.remember(
                "infra",
                &id(&format!("r{n}")),
                scope.clone(),
                "t".into(),
                expires_at,
                0,
            );
        }
        assert_eq!(tokens.len(), CAPACITY);
        // At now=50 entry r7 has expired: it makes room.
        tokens.remember("infra", &id("new-1"), scope.clone(), "t".into(), 5_000, 50);
        assert_eq!(tokens.len(), CAPACITY);
        assert_eq!(taken(&tokens, "infra", "r7", &scope), Ok(None));
        // Nothing expired: the one closest to expiry (r0) goes.
        tokens.remember("infra", &id("new-2"), scope.clone(), "t".into(), 5_000, 50);
        assert_eq!(tokens.len(), CAPACITY);
        assert_eq!(taken(&tokens, "infra", "r0", &scope), Ok(None));
        assert!(taken(&tokens, "infra", "r1", &scope).unwrap().is_some());
    }
}
