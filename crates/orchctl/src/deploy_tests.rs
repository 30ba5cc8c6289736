//! The generated Kubernetes files stay equal to what the policy says.

use std::path::Path;

use super::*;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn policy_text() -> String {
    std::fs::read_to_string(repo().join("config/policy.toml")).unwrap()
}

/// The committed deploy/kubernetes/base files are the generator's output for the committed
/// policy: change config/policy.toml without `orchctl deploy kubernetes` and this fails.
#[test]
fn committed_network_policies_match_the_policy() {
    let files = generate(&policy_text()).unwrap();
    let stale = stale_files(&repo().join("deploy/kubernetes/base"), &files);
    assert!(
        stale.is_empty(),
        "{stale:?} differ from config/policy.toml: run `cargo run -p orchctl -- deploy kubernetes`"
    );
}

#[test]
fn edges_are_the_call_graph_of_the_policy() {
    let policy = Policy::from_toml(&policy_text()).unwrap();
    let edges = edges(&policy);
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(edges["scaffolder"], set(&["api", "infra", "operator"]));
    assert_eq!(
        edges["secret-broker"],
        set(&["api", "infra", "operator", "scaffolder"])
    );
    assert_eq!(
        edges["vault"],
        set(&["api", "infra", "operator", "scaffolder"])
    );
    assert_eq!(edges["infra"], set(&["api", "operator"]));
}

/// A grant added to the policy opens exactly that edge; shared RPCs (health) open none between
/// services.
#[test]
fn a_new_grant_changes_the_network_and_health_does_not() {
    let base = "[rpc.\"orchestrator.infra.v1.InfraService\"]\nGetServer = [\"api\"]\n\
                [rpc.\"grpc.health.v1.Health\"]\nCheck = [\"vault\", \"infra\", \"operator\"]\n";
    let before = edges(&Policy::from_toml(base).unwrap());
    assert!(!before["infra"].contains("vault"), "{before:?}");
    assert!(before["vault"].contains("operator"), "{before:?}");
    assert!(!before["vault"].contains("infra"), "{before:?}");
    let widened = base.replace("[\"api\"]", "[\"api\", \"vault\"]");
    let after = edges(&Policy::from_toml(&widened).unwrap());
    assert!(after["infra"].contains("vault"), "{after:?}");
    let yaml = network_policies(&after);
    assert!(
        yaml.contains("# infra: called by api, operator, vault;"),
        "{yaml}"
    );
    assert!(
        yaml.contains("# vault: called by operator; calls infra"),
        "{yaml}"
    );
}
