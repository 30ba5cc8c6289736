//! `orchctl deploy kubernetes`: the parts of `deploy/kubernetes/base` that are derived from the
//! authorization policy, so the network and the policy cannot drift apart.
//!
//! Two files are written (and, with `--check`, compared instead):
//! - `network-policies.yaml`: default deny, DNS, PostgreSQL, and per service exactly the edges of
//!   the call graph that `config/policy.toml` allows, plus the SaaS egress of the services that
//!   call GitHub or the providers;
//! - `policy.toml`: a byte-for-byte copy of the policy, which kustomize turns into the ConfigMap
//!   every service loads (kustomize reads files only below the kustomization's folder).
//!
//! The edges: a caller `c` reaches service `s` when the policy lets `c` call one of `s`'s own
//! RPCs. The shared RPCs (gRPC health, reflection) are listed for every identity of the mesh;
//! they open an edge only for callers from outside the mesh (`api`, `operator`), otherwise every
//! service could reach every other one and the network would add nothing to the policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use orchestrator_mesh::{Policy, Service};

/// The label every pod of the mesh (and every caller: `api`, `operator`) carries, whose value is
/// the last segment of its SPIFFE ID. NetworkPolicies select on it.
pub(crate) const IDENTITY_LABEL: &str = "orchestrator.io/identity";

/// Pods (any namespace) that may read the admin port's `/metrics`.
pub(crate) const SCRAPER_LABEL: &str = "orchestrator.io/metrics-scraper";

/// The services that call APIs outside the cluster (GitHub, the providers) and the TCP ports.
/// infra also logs in to the servers it provisions over SSH (`INFRA_SSH_PORT`, 22).
fn saas_ports(service: Service) -> &'static [u16] {
    match service {
        Service::Scaffolder | Service::SecretBroker => &[443],
        Service::Infra => &[22, 443],
        Service::Vault => &[],
    }
}

/// Address ranges SaaS egress never goes to: the cluster's and every private network, and the
/// link-local range of cloud metadata services.
const NOT_SAAS: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
];

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeployCommand {
    /// Write (or with --check compare) deploy/kubernetes/base/{network-policies.yaml,policy.toml},
    /// derived from the policy file.
    Kubernetes {
        #[arg(long, default_value = "config/policy.toml")]
        policy: PathBuf,
        #[arg(long, default_value = "deploy/kubernetes/base")]
        out: PathBuf,
        /// Fail (listing the files) when the committed files differ from the policy's output.
        #[arg(long)]
        check: bool,
    },
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(command: DeployCommand) -> anyhow::Result<()> {
    let DeployCommand::Kubernetes { policy, out, check } = command;
    let text = std::fs::read_to_string(&policy)
        .with_context(|| format!("reading {}", policy.display()))?;
    let files = generate(&text)?;
    if check {
        let stale = stale_files(&out, &files);
        if !stale.is_empty() {
            bail!(
                "{} differ from {}: run `orchctl deploy kubernetes`",
                stale.join(", "),
                policy.display()
            );
        }
        println!("{} matches {}", out.display(), policy.display());
        return Ok(());
    }
    for (name, content) in &files {
        let path = out.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The files of `out` that are missing or differ from `files`.
pub(crate) fn stale_files(out: &Path, files: &[(&'static str, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(name, content)| {
            std::fs::read_to_string(out.join(name)).ok().as_ref() != Some(content)
        })
        .map(|(name, _)| out.join(name).display().to_string())
        .collect()
}

/// The generated files, by name, from the policy's text.
pub(crate) fn generate(policy_text: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let policy = Policy::from_toml(policy_text).context("parsing the policy")?;
    Ok(vec![
        ("network-policies.yaml", network_policies(&edges(&policy))),
        ("policy.toml", policy_text.to_owned()),
    ])
}

/// Callee (service name) -> the identities that may reach it over the network.
pub(crate) type Edges = BTreeMap<&'static str, BTreeSet<String>>;

/// The network edges the policy allows.
pub(crate) fn edges(policy: &Policy) -> Edges {
    let mut edges = Edges::new();
    let is_service = |name: &str| name.parse::<Service>().is_ok();
    for (path, callers) in policy.rules() {
        let grpc_service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let owner = Service::ALL
            .into_iter()
            .find(|s| s.grpc_service() == grpc_service);
        for caller in callers {
            let caller = caller.as_str();
            match owner {
                Some(callee) if caller != callee.name() => {
                    edges
                        .entry(callee.name())
                        .or_default()
                        .insert(caller.to_owned());
                }
                Some(_) => {}
                None if !is_service(caller) => {
                    for callee in Service::ALL {
                        edges
                            .entry(callee.name())
                            .or_default()
                            .insert(caller.to_owned());
                    }
                }
                None => {}
            }
        }
    }
    edges
}

fn network_policies(edges: &Edges) -> String {
    let mut y = String::from(
        "# GENERATED by `orchctl deploy kubernetes` from config/policy.toml: do not edit.\n\
         # A test (crates/orchctl, deploy::tests) fails when this file and the policy differ.\n\
         #\n\
         # Default deny for every pod of the namespace, then exactly the call graph's edges.\n",
    );
    let mesh: Vec<&str> = Service::ALL.iter().map(|s| s.name()).collect();
    doc(
        &mut y,
        "default-deny",
        "all traffic of the namespace is refused unless a policy below allows it",
    );
    y.push_str("  podSelector: {}\n  policyTypes: [Ingress, Egress]\n");

    doc(
        &mut y,
        "mesh-dns",
        "the services resolve names through the cluster DNS",
    );
    mesh_selector(&mut y, &mesh);
    y.push_str("  policyTypes: [Egress]\n  egress:\n    - to:\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: kube-system\n          podSelector:\n            matchLabels:\n              k8s-app: kube-dns\n      ports:\n        - {protocol: UDP, port: 53}\n        - {protocol: TCP, port: 53}\n");

    doc(
        &mut y,
        "mesh-postgres",
        "every service -> PostgreSQL (production overlay: an ipBlock instead)",
    );
    mesh_selector(&mut y, &mesh);
    y.push_str("  policyTypes: [Egress]\n  egress:\n    - to:\n        - podSelector:\n            matchLabels:\n              app.kubernetes.io/name: postgres\n      ports:\n        - {protocol: TCP, port: 5432}\n");

    for service in Service::ALL {
        let name = service.name();
        let callers = edges.get(name).cloned().unwrap_or_default();
        let callees: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|c| edges.get(c.name()).is_some_and(|from| from.contains(name)))
            .collect();
        let mut about = format!(
            "{name}: called by {}",
            join_or_none(callers.iter().map(String::as_str))
        );
        let _ = write!(
            about,
            "; calls {}",
            join_or_none(callees.iter().map(|c| c.name()))
        );
        if !saas_ports(service).is_empty() {
            about.push_str("; SaaS egress");
        }
        doc(&mut y, name, &about);
        let _ = write!(
            y,
            "  podSelector:\n    matchLabels:\n      {IDENTITY_LABEL}: {name}\n"
        );
        y.push_str("  policyTypes: [Ingress, Egress]\n  ingress:\n");
        for caller in &callers {
            let _ = write!(
                y,
                "    - from:\n        - podSelector:\n            matchLabels:\n              {IDENTITY_LABEL}: {caller}\n      ports:\n        - {{protocol: TCP, port: {}}}\n",
                service.default_port()
            );
        }
        let _ = write!(
            y,
            "    # the admin port (/metrics) to scrapers; kubelet probes come from the node\n    - from:\n        - namespaceSelector: {{}}\n          podSelector:\n            matchLabels:\n              {SCRAPER_LABEL}: \"true\"\n      ports:\n        - {{protocol: TCP, port: {}}}\n",
            service.default_admin_port()
        );
        if callees.is_empty() && saas_ports(service).is_empty() {
            y.push_str("  egress: []\n");
            continue;
        }
        y.push_str("  egress:\n");
        for callee in &callees {
            let _ = write!(
                y,
                "    - to:\n        - podSelector:\n            matchLabels:\n              {IDENTITY_LABEL}: {}\n      ports:\n        - {{protocol: TCP, port: {}}}\n",
                callee.name(),
                callee.default_port()
            );
        }
        let ports = saas_ports(service);
        if !ports.is_empty() {
            let _ = write!(
                y,
                "    - to:\n        - ipBlock:\n            cidr: 0.0.0.0/0\n            except: [{}]\n      ports:\n",
                NOT_SAAS.join(", ")
            );
            for port in ports {
                let _ = writeln!(y, "        - {{protocol: TCP, port: {port}}}");
            }
        }
    }
    outside_callers(&mut y, edges);
    y
}

/// Egress of the callers from outside the mesh (`api`, `operator`), when they run in the
/// namespace: the default deny covers them too. Additive: their own other egress is theirs.
fn outside_callers(y: &mut String, edges: &Edges) {
    let outside: BTreeSet<&str> = edges
        .values()
        .flatten()
        .map(String::as_str)
        .filter(|c| c.parse::<Service>().is_err())
        .collect();
    for caller in outside {
        let callees: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|s| {
                edges
                    .get(s.name())
                    .is_some_and(|from| from.contains(caller))
            })
            .collect();
        let about = format!(
            "{caller} (outside the mesh) calls {}",
            join_or_none(callees.iter().map(|c| c.name()))
        );
        doc(y, &format!("{caller}-to-mesh"), &about);
        let _ = write!(
            y,
            "  podSelector:\n    matchLabels:\n      {IDENTITY_LABEL}: {caller}\n  policyTypes: [Egress]\n  egress:\n"
        );
        for callee in &callees {
            let _ = write!(
                y,
                "    - to:\n        - podSelector:\n            matchLabels:\n              {IDENTITY_LABEL}: {}\n      ports:\n        - {{protocol: TCP, port: {}}}\n",
                callee.name(),
                callee.default_port()
            );
        }
        y.push_str("    - to:\n        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: kube-system\n          podSelector:\n            matchLabels:\n              k8s-app: kube-dns\n      ports:\n        - {protocol: UDP, port: 53}\n        - {protocol: TCP, port: 53}\n");
    }
}

fn doc(y: &mut String, name: &str, about: &str) {
    let _ = write!(
        y,
        "---\n# {about}\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  labels:\n    app.kubernetes.io/part-of: orchestrator-mesh\nspec:\n"
    );
}

fn mesh_selector(y: &mut String, mesh: &[&str]) {
    let _ = write!(
        y,
        "  podSelector:\n    matchExpressions:\n      - {{key: {IDENTITY_LABEL}, operator: In, values: [{}]}}\n",
        mesh.join(", ")
    );
}

fn join_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "nobody".to_owned()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
#[path = "deploy_tests.rs"]
mod tests;
