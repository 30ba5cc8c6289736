#!/usr/bin/env python3
"""Invariants of the rendered Kubernetes overlays (tools/k8s/check.sh runs this on each one).

    check.py --repo ROOT RENDERED.yaml...     # exit 1 listing every violation
    check.py --repo ROOT --self-test RENDERED.yaml
        # breaks a copy of the render in each way below and fails unless each break is caught

What it asserts, per rendered overlay:
  * every container (services, PostgreSQL) runs non-root, read-only root filesystem, no
    privilege escalation, all capabilities dropped, seccomp RuntimeDefault;
  * each service's pod mounts only its own Secrets (<service>-secrets, <service>-tls), holds no
    secret in an env literal (secrets by <NAME>_FILE only, into its own mount) and names no other
    service's L1 variable (crates/mesh/src/service.rs is read for the lists);
  * each generated Secret holds only its own service's keys;
  * each service has httpGet liveness/readiness probes on its admin port;
  * the Certificates prove spiffe://<ORCH_TRUST_DOMAIN>/<name> with the DNS SAN <name>, both EKUs;
  * the NetworkPolicies: a default deny, and ingress/egress edges between identities EQUAL to the
    call graph derived here, independently of the Rust generator, from config/policy.toml; SaaS
    egress only from scaffolder, secret-broker and infra.
"""

import argparse
import copy
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

SERVICES = ["scaffolder", "secret-broker", "vault", "infra"]
GRPC_SERVICE = {
    "orchestrator.scaffolder.v1.ScaffolderService": "scaffolder",
    "orchestrator.secretbroker.v1.SecretBrokerService": "secret-broker",
    "orchestrator.vault.v1.VaultService": "vault",
    "orchestrator.infra.v1.InfraService": "infra",
}
IDENTITY = "orchestrator.io/identity"
SAAS_SERVICES = {"scaffolder", "secret-broker", "infra"}
# Credentials every service has its own copy of (not L1, still secret).
OWN_SECRETS = ["DATABASE_URL", "AUDIT_KEY"]


def l1_secrets(repo: Path) -> dict:
    """service -> its L1 variable names, read from crates/mesh/src/service.rs."""
    src = (repo / "crates/mesh/src/service.rs").read_text()
    body = src[src.index("pub fn l1_secrets") :]
    body = body[: body.index("\n    }\n")]
    names = {"Scaffolder": "scaffolder", "SecretBroker": "secret-broker", "Vault": "vault", "Infra": "infra"}
    out = {}
    for variant, items in re.findall(r"Service::(\w+) => &\[(.*?)\]", body, re.S):
        out[names[variant]] = re.findall(r'"([A-Z0-9_]+)"', items)
    assert set(out) == set(SERVICES), f"could not read l1_secrets from service.rs: {out}"
    return out


def policy_edges(repo: Path) -> set:
    """(caller, callee) pairs: a caller reaches a service when it may call one of the service's
    own RPCs; shared RPCs (health, reflection) open edges only for callers outside the mesh."""
    policy = tomllib.loads((repo / "config/policy.toml").read_text())
    edges = set()
    for grpc_service, methods in policy["rpc"].items():
        owner = GRPC_SERVICE.get(grpc_service)
        for callers in methods.values():
            for caller in callers:
                if owner is not None and caller != owner:
                    edges.add((caller, owner))
                elif owner is None and caller not in SERVICES:
                    edges.update((caller, s) for s in SERVICES)
    return edges


def pod_spec(doc):
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc.get("kind") == "Pod":
        return doc["spec"]
    return None


def name_of(doc):
    return doc["metadata"]["name"]


def own_secret(service: str, secret_name: str) -> bool:
    return re.fullmatch(rf"{re.escape(service)}-(secrets|tls)(-[a-z0-9]{{10}})?", secret_name) is not None


def check_security(doc, errors):
    spec = pod_spec(doc)
    pod_sc = spec.get("securityContext") or {}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        where = f"{doc['kind']}/{name_of(doc)} container {c['name']}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            errors.append(f"{where}: runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            errors.append(f"{where}: privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            errors.append(f"{where}: capabilities do not drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            errors.append(f"{where}: adds capabilities")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            errors.append(f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault")


def check_service_pod(doc, l1, errors):
    service = name_of(doc)
    spec = pod_spec(doc)
    where = f"Deployment/{service}"
    if spec.get("automountServiceAccountToken") is not False:
        errors.append(f"{where}: mounts a service account token")
    foreign = {n for s, names in l1.items() if s != service for n in names}
    secret_like = set(l1[service]) | set(OWN_SECRETS) | foreign
    mounts = {}
    for vol in spec.get("volumes", []):
        names = []
        if "secret" in vol:
            names.append(vol["secret"]["secretName"])
        for src in (vol.get("projected") or {}).get("sources", []):
            if "secret" in src:
                names.append(src["secret"]["name"])
        for secret_name in names:
            if not own_secret(service, secret_name):
                errors.append(f"{where}: mounts Secret {secret_name}, not its own")
            mounts[vol["name"]] = vol
    for c in spec["containers"]:
        paths = {
            m["mountPath"]: m["name"] for m in c.get("volumeMounts", []) if m["name"] in mounts
        }
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                errors.append(f"{where}: envFrom a Secret ({src['secretRef']['name']}): secrets go by file")
        for env in c.get("env", []):
            name, value = env["name"], env.get("value")
            base = name.removesuffix("_FILE")
            if base in foreign:
                errors.append(f"{where}: names another service's L1 secret {name}")
            if (env.get("valueFrom") or {}).get("secretKeyRef"):
                errors.append(f"{where}: {name} comes from a Secret as a value: use {base}_FILE")
            if name in secret_like and value is not None:
                errors.append(f"{where}: secret {name} is an env literal")
            if value and ("PRIVATE KEY" in value or re.search(r"://[^/\s:@]+:[^@\s]+@", value)):
                errors.append(f"{where}: {name} holds what looks like a secret")
            if name.endswith("_FILE") and base in secret_like:
                if not any(value and value.startswith(p.rstrip("/") + "/") for p in paths):
                    errors.append(f"{where}: {name}={value} is not in one of its own Secret mounts")
        probes = {k: c.get(k) for k in ("livenessProbe", "readinessProbe")}
        for kind, probe in probes.items():
            get = (probe or {}).get("httpGet") or {}
            if get.get("port") != "admin" or get.get("path") not in ("/healthz", "/readyz"):
                errors.append(f"{where}: {kind} is not an httpGet on the admin port")


def check_secret_objects(docs, l1, errors):
    for doc in docs:
        if doc.get("kind") != "Secret":
            continue
        name = name_of(doc)
        owner = next((s for s in SERVICES if own_secret(s, name)), None)
        keys = list((doc.get("data") or {}).keys()) + list((doc.get("stringData") or {}).keys())
        if owner is None:
            continue
        prefix = owner.replace("-", "_") + "_"
        for key in keys:
            upper = key.upper()
            if not (upper in l1[owner] or key.startswith(prefix)):
                errors.append(f"Secret/{name}: key {key} does not belong to {owner}")


def selector_identity(selector):
    return ((selector or {}).get("matchLabels") or {}).get(IDENTITY)


def network_edges(docs, errors):
    """(caller, callee) pairs the NetworkPolicies open, from both ends."""
    ingress, egress = set(), set()
    default_deny = False
    for doc in docs:
        if doc.get("kind") != "NetworkPolicy":
            continue
        spec = doc["spec"]
        if spec.get("podSelector") == {} and set(spec.get("policyTypes", [])) == {"Ingress", "Egress"} \
                and not spec.get("ingress") and not spec.get("egress"):
            default_deny = True
        me = selector_identity(spec.get("podSelector"))
        for rule in spec.get("ingress") or []:
            for peer in rule.get("from") or []:
                caller = selector_identity(peer.get("podSelector"))
                if me and caller:
                    ingress.add((caller, me))
        for rule in spec.get("egress") or []:
            for peer in rule.get("to") or []:
                callee = selector_identity(peer.get("podSelector"))
                if me and callee:
                    egress.add((me, callee))
                block = peer.get("ipBlock") or {}
                if block.get("cidr") in ("0.0.0.0/0", "::/0") and me not in SAAS_SERVICES:
                    errors.append(f"NetworkPolicy/{name_of(doc)}: SaaS egress for {me!r}")
    if not default_deny:
        errors.append("no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)")
    return ingress, egress


def check_network(docs, edges, errors):
    ingress, egress = network_edges(docs, errors)
    if ingress != edges:
        errors.append(
            f"NetworkPolicy ingress edges != policy edges: extra {sorted(ingress - edges)}, "
            f"missing {sorted(edges - ingress)}"
        )
    if egress != edges:
        errors.append(
            f"NetworkPolicy egress edges != policy edges: extra {sorted(egress - edges)}, "
            f"missing {sorted(edges - egress)}"
        )


def check_certificates(docs, errors):
    settings = next(
        (d for d in docs if d.get("kind") == "ConfigMap" and name_of(d).startswith("mesh-settings")), None
    )
    trust_domain = ((settings or {}).get("data") or {}).get("ORCH_TRUST_DOMAIN")
    if not trust_domain:
        errors.append("no mesh-settings ConfigMap with ORCH_TRUST_DOMAIN")
        return
    certs = {name_of(d): d for d in docs if d.get("kind") == "Certificate" and d["apiVersion"] == "cert-manager.io/v1"}
    allowed = {"secretName", "duration", "renewBefore", "uris", "dnsNames", "privateKey", "usages",
               "issuerRef", "isCA", "commonName", "subject", "ipAddresses", "emailAddresses",
               "secretTemplate", "keystores", "revisionHistoryLimit", "additionalOutputFormats"}
    for name in SERVICES + ["api", "operator"]:
        cert = certs.get(name)
        if cert is None:
            errors.append(f"no Certificate {name}")
            continue
        spec = cert["spec"]
        unknown = set(spec) - allowed
        if unknown:
            errors.append(f"Certificate/{name}: unknown fields {sorted(unknown)}")
        if spec.get("uris") != [f"spiffe://{trust_domain}/{name}"]:
            errors.append(f"Certificate/{name}: uris {spec.get('uris')} is not [spiffe://{trust_domain}/{name}]")
        if name not in (spec.get("dnsNames") or []):
            errors.append(f"Certificate/{name}: no DNS SAN {name}")
        if not {"server auth", "client auth"} <= set(spec.get("usages") or []):
            errors.append(f"Certificate/{name}: usages lack server auth / client auth")
        if spec.get("secretName") != f"{name}-tls" or not (spec.get("issuerRef") or {}).get("name"):
            errors.append(f"Certificate/{name}: secretName must be {name}-tls, with an issuerRef")


def check_dashboard(repo: Path) -> list:
    """deploy/grafana's dashboard asks only for metrics the services export (or cAdvisor's)."""
    exported = set()
    for src in ("crates/mesh/src/observe.rs", "crates/mesh/src/transport.rs"):
        exported |= set(re.findall(r'pub const \w+: &str = "([a-z_]+)";', (repo / src).read_text()))
    known = exported | {f"{m}_bucket" for m in exported} | {
        "container_memory_working_set_bytes", "container_cpu_usage_seconds_total"}
    errors = []
    dashboard = json.loads((repo / "deploy/grafana/orchestrator-mesh.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"([a-z_]+)\{", target["expr"]):
                if metric not in known:
                    errors.append(f"dashboard panel {panel['title']!r}: unknown metric {metric}")
    return errors


def check(docs, repo: Path) -> list:
    errors = []
    l1 = l1_secrets(repo)
    for doc in docs:
        if pod_spec(doc) is not None:
            check_security(doc, errors)
            if doc["kind"] == "Deployment" and name_of(doc) in SERVICES:
                check_service_pod(doc, l1, errors)
    deployments = {name_of(d) for d in docs if d.get("kind") == "Deployment"}
    for s in SERVICES:
        if s not in deployments:
            errors.append(f"no Deployment {s}")
    check_secret_objects(docs, l1, errors)
    check_network(docs, policy_edges(repo), errors)
    check_certificates(docs, errors)
    return errors


def find(docs, kind, name):
    return next(d for d in docs if d.get("kind") == kind and name_of(d) == name)


def container(docs, name):
    return pod_spec(find(docs, "Deployment", name))["containers"][0]


def mutations():
    """(what, function breaking a copy of the docs): each must be reported."""

    def caps(docs):
        container(docs, "vault")["securityContext"]["capabilities"]["drop"] = []

    def rw_root(docs):
        container(docs, "infra")["securityContext"]["readOnlyRootFilesystem"] = False

    def foreign_mount(docs):
        pod_spec(find(docs, "Deployment", "infra"))["volumes"].append(
            {"name": "stolen", "secret": {"secretName": "vault-secrets"}}
        )

    def literal(docs):
        container(docs, "vault")["env"].append({"name": "VAULT_MASTER_KEY", "value": "k1:AAAA"})

    def foreign_var(docs):
        container(docs, "scaffolder")["env"].append(
            {"name": "GITHUB_APP_PRIVATE_KEY_FILE", "value": "/run/secrets/scaffolder/x"}
        )

    def extra_edge(docs):
        np = find(docs, "NetworkPolicy", "infra")
        np["spec"]["ingress"].append({"from": [{"podSelector": {"matchLabels": {IDENTITY: "vault"}}}]})

    def missing_edge(docs):
        np = find(docs, "NetworkPolicy", "vault")
        np["spec"]["ingress"] = [r for r in np["spec"]["ingress"]
                                 if selector_identity((r.get("from") or [{}])[0].get("podSelector")) != "infra"]

    def vault_saas(docs):
        find(docs, "NetworkPolicy", "vault")["spec"]["egress"] = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]

    def no_deny(docs):
        docs.remove(find(docs, "NetworkPolicy", "default-deny"))

    def wrong_spiffe(docs):
        find(docs, "Certificate", "vault")["spec"]["uris"] = ["spiffe://orchestrator.local/infra"]

    def probe(docs):
        container(docs, "vault")["readinessProbe"] = {"grpc": {"port": 50053}}

    def foreign_key(docs):
        secret = next(d for d in docs if d.get("kind") == "Secret" and own_secret("scaffolder", name_of(d)))
        secret.setdefault("data", {})["vault_master_key"] = "AAAA"

    return [(f.__name__, f) for f in (caps, rw_root, foreign_mount, literal, foreign_var, extra_edge,
                                      missing_edge, vault_saas, no_deny, wrong_spiffe, probe, foreign_key)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("rendered", nargs="+", type=Path)
    args = ap.parse_args()
    failed = False
    for e in check_dashboard(args.repo):
        print(e, file=sys.stderr)
        failed = True
    for path in args.rendered:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        errors = check(docs, args.repo)
        for e in errors:
            print(f"{path}: {e}", file=sys.stderr)
        failed |= bool(errors)
        if args.self_test and not errors:
            for what, mutate in mutations():
                broken = copy.deepcopy(docs)
                try:
                    mutate(broken)
                except StopIteration:
                    continue  # this overlay has no such object (production: no Secret)
                if not check(broken, args.repo):
                    print(f"{path}: self-test: breaking `{what}` went unnoticed", file=sys.stderr)
                    failed = True
        print(f"{path}: {len(docs)} objects, {'FAILED' if errors else 'invariants hold'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
