#!/usr/bin/env python3
"""Smoke test of the generated Python SDK against a running vault, over mutual TLS.

Env: ORCH_TARGET (host:port of the vault), ORCH_CA, ORCH_CERT, ORCH_KEY (PEM files of the `api`
identity), ORCH_SERVER_NAME (TLS name to verify, default `localhost`).
Prints one line per check and `N passed, M failed`; exits non-zero if any check failed.
Run with the SDK venv: `$ORCH_SDK_VENV/bin/python sdk/python/smoke_test.py` (see sdk/README.md).
"""

import os
import pathlib
import sys
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "gen"))
# gRPC core logs the TLS alert of the expected no-client-certificate failure to stderr as errors;
# keep the output to the check lines unless asked (GRPC_VERBOSITY=ERROR or DEBUG).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from orchestrator.vault.v1 import vault_pb2, vault_pb2_grpc  # noqa: E402

TIMEOUT = 10.0  # seconds per RPC
CALLER = "spiffe://orchestrator.local/api"
GET_METHOD = "/orchestrator.vault.v1.VaultService/GetUserSecret"
# Codes that mean the call never reached the vault's handler (refused by TLS or the authz layer).
NOT_REACHED = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE,
               grpc.StatusCode.UNAUTHENTICATED}


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def env(name, default=None):
    value = os.environ.get(name, default)
    if not value:
        sys.exit(f"smoke_test: environment variable {name} is required (see the module docstring)")
    return value


def read(path_var):
    path = env(path_var)
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as e:
        sys.exit(f"smoke_test: cannot read {path_var}={path}: {e}")


def channel(target, server_name, ca, cert=None, key=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(
        target, creds, options=[("grpc.ssl_target_name_override", server_name)])


def rpc_error(fn, *args, **kwargs):
    """Calls fn and returns the grpc.RpcError it raised, or None if it succeeded."""
    try:
        fn(*args, timeout=TIMEOUT, **kwargs)
    except grpc.RpcError as e:
        return e
    return None


def check_health(ch):
    resp = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    expect(resp.status == health_pb2.HealthCheckResponse.SERVING, f"health status {status}")
    return f"grpc.health.v1.Health/Check -> {status}"


def check_list_reaches_handler(ch):
    stub = vault_pb2_grpc.VaultServiceStub(ch)
    err = rpc_error(stub.ListUserSecrets, vault_pb2.ListUserSecretsRequest(user_id="u-1"))
    if err is None:
        return "ListUserSecrets reached the handler: OK"
    expect(err.code() not in NOT_REACHED,
           f"ListUserSecrets did not reach the handler: {err.code().name}: {err.details()}")
    return f"ListUserSecrets reached the handler: {err.code().name} ({err.details()})"


def check_get_denied(ch):
    stub = vault_pb2_grpc.VaultServiceStub(ch)
    err = rpc_error(stub.GetUserSecret, vault_pb2.GetUserSecretRequest(user_id="u-1", key="k"))
    expect(err is not None, "GetUserSecret succeeded for api; expected PERMISSION_DENIED")
    expect(err.code() == grpc.StatusCode.PERMISSION_DENIED,
           f"GetUserSecret: {err.code().name}: {err.details()}; expected PERMISSION_DENIED")
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    expect(raw is not None, "no grpc-status-details-bin trailer")
    status = status_pb2.Status.FromString(raw)
    expect(status.code == grpc.StatusCode.PERMISSION_DENIED.value[0],
           f"google.rpc.Status.code {status.code} != 7")
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    expect(len(infos) == 1, f"expected exactly one ErrorInfo, got {len(infos)}: {status}")
    info = infos[0]
    expect(info.reason == "RPC_NOT_ALLOWED", f"ErrorInfo.reason {info.reason!r}")
    expect(info.metadata.get("caller") == CALLER, f"ErrorInfo caller {info.metadata.get('caller')!r}")
    expect(info.metadata.get("method") == GET_METHOD,
           f"ErrorInfo method {info.metadata.get('method')!r}")
    return (f"GetUserSecret -> PERMISSION_DENIED, ErrorInfo reason={info.reason} "
            f"domain={info.domain} caller={info.metadata['caller']}")


def check_no_client_cert_refused(ch, mtls_health_passed):
    # Only meaningful if the same target and server name work with a certificate: otherwise the
    # failure below could be a wrong address or name rather than the missing certificate.
    expect(mtls_health_passed, "inconclusive: the health check with a client certificate failed too")
    err = rpc_error(health_pb2_grpc.HealthStub(ch).Check, health_pb2.HealthCheckRequest())
    expect(err is not None, "health check without a client certificate succeeded")
    expect(err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED),
           f"without a client certificate: {err.code().name}: {err.details()}; "
           "expected the TLS handshake to fail (UNAVAILABLE/UNAUTHENTICATED)")
    return f"health check without a client certificate refused: {err.code().name}"


def main():
    target = env("ORCH_TARGET")
    server_name = env("ORCH_SERVER_NAME", "localhost")
    ca, cert, key = read("ORCH_CA"), read("ORCH_CERT"), read("ORCH_KEY")

    mtls = channel(target, server_name, ca, cert, key)
    anonymous = channel(target, server_name, ca)
    results = {}
    checks = [
        ("health over mTLS", lambda: check_health(mtls)),
        ("ListUserSecrets allowed for api", lambda: check_list_reaches_handler(mtls)),
        ("GetUserSecret denied for api", lambda: check_get_denied(mtls)),
        ("no client certificate refused",
         lambda: check_no_client_cert_refused(anonymous, results.get("health over mTLS", False))),
    ]
    passed = failed = 0
    for name, fn in checks:
        results[name] = False
        try:
            print(f"PASS {name}: {fn()}", flush=True)
            results[name] = True
            passed += 1
        except CheckFailed as e:
            print(f"FAIL {name}: {e}", flush=True)
            failed += 1
        except grpc.RpcError as e:
            print(f"FAIL {name}: {e.code().name}: {e.details()}", flush=True)
            failed += 1
        except Exception:  # a bug in the check itself: show it, keep going
            print(f"FAIL {name}: unexpected error\n{traceback.format_exc()}", flush=True)
            failed += 1
    mtls.close()
    anonymous.close()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
