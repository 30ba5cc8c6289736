//! Every (identity x RPC) pair of the policy, against the four real services.

#![allow(clippy::unwrap_used)] // Test helpers: a failed step is a failed test.

use orchestrator_e2e::{TestMesh, raw, repo_root};
use orchestrator_mesh::server::served;
use orchestrator_mesh::{IdentityName, Policy, Service};
use tonic::Code;

#[tokio::test]
async fn every_identity_against_every_rpc_follows_the_policy_file() {
    let policy = Policy::load(&repo_root().join("config/policy.toml")).unwrap();
    let mesh = Service::ALL
        .into_iter()
        .fold(TestMesh::builder(), |b, service| b.service(service))
        .start()
        .await;
    let callers = orchestrator_pki::DEFAULT_IDENTITIES;

    let mut pairs = 0;
    let mut allowed_pairs = 0;
    for service in Service::ALL {
        let mut channels = Vec::new();
        for name in callers {
            channels.push((name, mesh.channel(service, name).await));
        }
        for descriptor in served(service) {
            for method in &descriptor.methods {
                let path = format!("/{}/{}", descriptor.name, method);
                for (name, channel) in &channels {
                    let caller: IdentityName = name.parse().unwrap();
                    let allowed = policy.allows(&path, &caller);
                    let code = raw::call(channel.clone(), &path).await;
                    if allowed {
                        // Reached the handler: whatever it answers, it is not the policy's refusal.
                        assert!(
                            !matches!(
                                code,
                                Code::PermissionDenied
                                    | Code::Unauthenticated
                                    | Code::Unavailable
                                    | Code::Unimplemented
                            ),
                            "{name} -> {path} is allowed by the policy but got {code:?}"
                        );
                        allowed_pairs += 1;
                    } else {
                        assert_eq!(
                            code,
                            Code::PermissionDenied,
                            "{name} -> {path} must be denied"
                        );
                    }
                    pairs += 1;
                }
            }
        }
    }
    // Every rule was walked: each (RPC, caller) the policy allows was called and reached its
    // handler, counted from the policy itself, not from the loop above.
    let rules = policy.rules();
    let expected_allowed: usize = rules
        .iter()
        .map(|(path, allowed)| {
            let served_by = Service::ALL
                .iter()
                .filter(|s| {
                    served(**s)
                        .iter()
                        .any(|d| path.starts_with(&format!("/{}/", d.name)))
                })
                .count();
            served_by * allowed.len()
        })
        .sum();
    assert_eq!(allowed_pairs, expected_allowed);
    assert!(pairs > allowed_pairs, "some calls were refused too");
    for (path, _) in &rules {
        assert!(
            Service::ALL.iter().any(|s| served(*s)
                .iter()
                .any(|d| path.starts_with(&format!("/{}/", d.name)))),
            "{path} is in the policy but served by nobody"
        );
    }
    println!("checked {pairs} (identity, RPC) pairs, {allowed_pairs} allowed");
}
