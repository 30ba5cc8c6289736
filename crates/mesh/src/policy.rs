//! The authorization policy: which identities may call which RPC. Default deny.
//!
//! One TOML file for the whole mesh, e.g.
//! ```toml
//! [rpc."orchestrator.vault.v1.VaultService"]
//! GetUserSecret = ["infra"]
//! RotateDataKey = ["operator"]
//! ```
//! Each service loads it at start and refuses to run when one of the RPCs it serves has no entry
//! (an empty list is an explicit "nobody"), or when the file names an RPC that does not exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;

use crate::identity::IdentityName;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("policy file is not valid TOML of the expected shape: {0}")]
    Parse(String),
    #[error("policy entry {service}/{method} names an invalid identity: {source}")]
    Identity {
        service: String,
        method: String,
        source: crate::identity::IdentityError,
    },
    #[error(
        "policy has no entry for {service}/{method}; every RPC a service serves needs one (use [] for nobody)"
    )]
    Uncovered { service: String, method: String },
    #[error("policy names {service}/{method}, which no known service declares")]
    Unknown { service: String, method: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rpc: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// The parsed policy: gRPC path (`/pkg.Service/Method`) -> identities allowed to call it.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<String, BTreeSet<IdentityName>>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let mut rules = HashMap::new();
        for (service, methods) in file.rpc {
            for (method, names) in methods {
                let allowed = names
                    .iter()
                    .map(|n| {
                        n.parse().map_err(|source| PolicyError::Identity {
                            service: service.clone(),
                            method: method.clone(),
                            source,
                        })
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?;
                rules.insert(format!("/{service}/{method}"), allowed);
            }
        }
        Ok(Self { rules })
    }

    /// Whether `caller` may call the RPC at `path`. Unknown paths are denied.
    pub fn allows(&self, path: &str, caller: &IdentityName) -> bool {
        self.rules
            .get(path)
            .is_some_and(|allowed| allowed.contains(caller))
    }

    /// Whether the RPC at `path` is one the policy names (every RPC of the mesh is).
    pub fn knows(&self, path: &str) -> bool {
        self.rules.contains_key(path)
    }

    /// Refuses a policy that leaves one of `served` (service, methods) without an entry.
    pub fn check_covers<'a>(
        &self,
        served: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<(), PolicyError> {
        for (service, methods) in served {
            for method in methods {
                if !self.rules.contains_key(&format!("/{service}/{method}")) {
                    return Err(PolicyError::Uncovered {
                        service: service.to_owned(),
                        method: method.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuses a policy that names an RPC outside `known` (a typo would otherwise silently
    /// leave the intended RPC uncovered or grant nothing).
    pub fn check_known<'a>(
        &self,
        known: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<(), PolicyError> {
        let known: BTreeSet<String> = known
            .into_iter()
            .flat_map(|(svc, methods)| methods.iter().map(move |m| format!("/{svc}/{m}")))
            .collect();
        let mut unknown: Vec<&String> = self.rules.keys().filter(|p| !known.contains(*p)).collect();
        unknown.sort();
        match unknown.first() {
            Some(path) => {
                let (service, method) = path[1..].split_once('/').unwrap_or((path, ""));
                Err(PolicyError::Unknown {
                    service: service.to_owned(),
                    method: method.to_owned(),
                })
            }
            None => Ok(()),
        }
    }

    /// Every rule, sorted: (path, allowed identities). For tests that walk the whole table.
    pub fn rules(&self) -> Vec<(&str, Vec<&IdentityName>)> {
        let mut rules: Vec<_> = self
            .rules
            .iter()
            .map(|(path, ids)| (path.as_str(), ids.iter().collect()))
            .collect();
        rules.sort();
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [rpc."orchestrator.vault.v1.VaultService"]
        GetUserSecret = ["infra"]
        RotateDataKey = []
    "#;

    fn id(s: &str) -> IdentityName {
        s.parse().unwrap()
    }

    #[test]
    fn default_deny() {
        let p = Policy::from_toml(POLICY).unwrap();
        let get = "/orchestrator.vault.v1.VaultService/GetUserSecret";
        assert!(p.allows(get, &id("infra")));
        assert!(!p.allows(get, &id("api")));
        assert!(!p.allows(
            "/orchestrator.vault.v1.VaultService/RotateDataKey",
            &id("infra")
        ));
        assert!(!p.allows("/orchestrator.vault.v1.VaultService/Nope", &id("infra")));
    }

    #[test]
    fn coverage_and_typos_are_caught() {
        let p = Policy::from_toml(POLICY).unwrap();
        let methods = vec![
            "GetUserSecret".to_owned(),
            "RotateDataKey".to_owned(),
            "PutUserSecret".to_owned(),
        ];
        let err = p
            .check_covers([("orchestrator.vault.v1.VaultService", methods.as_slice())])
            .unwrap_err();
        assert!(
            err.to_string().contains("VaultService/PutUserSecret"),
            "{err}"
        );
        let known = vec!["GetUserSecret".to_owned()];
        let err = p
            .check_known([("orchestrator.vault.v1.VaultService", known.as_slice())])
            .unwrap_err();
        assert!(err.to_string().contains("RotateDataKey"), "{err}");
    }

    #[test]
    fn refuses_bad_identities_and_shapes() {
        assert!(Policy::from_toml("[rpc.\"a.B\"]\nM = [\"Not Valid\"]").is_err());
        assert!(Policy::from_toml("allow_all = true").is_err());
    }

    mod props {
        //! Property tests: the policy file parser takes arbitrary text and arbitrary tables
        //! without panicking, and what it accepts means exactly what the file says.
        use super::super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                failure_persistence: None,
                // PROPTEST_CASES (the long run) wins over the short run.
                ..ProptestConfig::with_cases(
                    std::env::var("PROPTEST_CASES")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(256),
                )
            }
        }

        fn toml_like() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "(\\[rpc(\\.\"[a-zA-Z./]{0,8}\")?\\]\n)?([A-Za-z\"]{1,6} = \\[(\"[a-z -]{0,6}\",?)*\\]\n){0,3}",
                "\\[\\[?[a-z.\"]{0,12}\\]\\]?\n[a-z]{0,4} ?=? ?[\\[\\]{}0-9\"a-z,.]{0,16}",
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof!["[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", any::<String>()]
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn prop_policy_text_never_panics(text in toml_like()) {
                if let Err(e) = Policy::from_toml(&text) {
                    let _ = e.to_string();
                }
            }

            #[test]
            fn prop_policy_tables_mean_what_they_say(
                // No `/` in names: `a/b`.`c` and `a`.`b/c` are one path (which no service
                // declares, so `check_known` refuses it at start).
                table in btree_map(
                    "[^/\\p{C}]{0,12}",
                    btree_map("[^/\\p{C}]{0,12}", vec(name(), 0..4), 0..4),
                    0..4,
                ),
            ) {
                let text = toml::to_string(&BTreeMap::from([("rpc", &table)])).unwrap();
                let all_valid = table
                    .values()
                    .flat_map(|m| m.values().flatten())
                    .all(|n| n.parse::<IdentityName>().is_ok());
                match Policy::from_toml(&text) {
                    Ok(policy) => {
                        prop_assert!(all_valid);
                        for (service, methods) in &table {
                            for (method, names) in methods {
                                let path = format!("/{service}/{method}");
                                prop_assert!(policy.knows(&path));
                                for n in names {
                                    prop_assert!(policy.allows(&path, &n.parse().unwrap()));
                                }
                                prop_assert!(!policy.allows(&path, &"not-listed-x".parse().unwrap())
                                    || names.iter().any(|n| n == "not-listed-x"));
                            }
                        }
                        // Checking against any RPC list answers, and never panics.
                        let known = vec!["GetUserSecret".to_owned()];
                        let _ = policy.check_known([("a.B", known.as_slice())]);
                        let _ = policy.check_covers([("a.B", known.as_slice())]);
                    }
                    Err(e) => {
                        prop_assert!(!all_valid, "{e}");
                        prop_assert!(matches!(e, PolicyError::Identity { .. }), "{e}");
                    }
                }
            }
        }
    }
}
