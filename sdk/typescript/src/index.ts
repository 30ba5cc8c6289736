// The client of the orchestrator mesh for Node: connect() gives a Connect transport speaking gRPC
// over HTTP/2 with mTLS and the server's SPIFFE ID checked; decode() reads refusals.
//
//   import { connect, createClient, decode, vault } from "@orchestrator/mesh";
//   const transport = connect("vault", "127.0.0.1:50053", { pkiDir: ".orchestrator/pki", identity: "api" });
//   const client = createClient(vault.VaultService, transport);
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DEFAULT_TRUST_DOMAIN, SERVICES, type ServiceName, spiffeId, spiffeServerCheck } from "./tls.js";

export { Code, ConnectError, createClient } from "@connectrpc/connect";
export { type DecodedError, type FieldViolation, decode } from "./errors.js";
export { LocalMesh } from "./local.js";
export {
  DEFAULT_TRUST_DOMAIN,
  IdentityMismatchError,
  SERVICES,
  type ServiceName,
  spiffeId,
  spiffeServerCheck,
} from "./tls.js";
export * as common from "../gen/orchestrator/common/v1/common_pb.js";
export * as infra from "../gen/orchestrator/infra/v1/infra_pb.js";
export * as scaffolder from "../gen/orchestrator/scaffolder/v1/scaffolder_pb.js";
export * as secretbroker from "../gen/orchestrator/secretbroker/v1/secret_broker_pb.js";
export * as vault from "../gen/orchestrator/vault/v1/vault_pb.js";

export interface ConnectOptions {
  /** The folder `orchctl up` writes (ca.crt, <identity>.crt, <identity>.key). */
  pkiDir?: string;
  /** Whose certificate to present (default "api"); null with no cert/key: none (refused). */
  identity?: string | null;
  /** Explicit PEM files; they win over pkiDir's. */
  ca?: string;
  cert?: string;
  key?: string;
  trustDomain?: string;
  /** HTTP/2 keepalive pings (default 30 s, answered within 10 s). */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** Deadline of each call unless the call sets timeoutMs (default 30 s). */
  defaultTimeoutMs?: number;
}

/** A gRPC transport to `service` at `target` ("host:port") over mTLS. Every TLS connection it
 * opens verifies the chain against the mesh CA and requires the server's certificate to carry
 * exactly one URI SAN, spiffe://<trustDomain>/<service>; otherwise calls fail with Code.Unavailable
 * and an IdentityMismatchError as the cause. */
export function connect(service: ServiceName, target: string, options: ConnectOptions = {}): Transport {
  if (!SERVICES.includes(service)) {
    throw new Error(`unknown service ${service}: one of ${SERVICES.join(", ")}`);
  }
  const identity = options.identity === undefined ? "api" : options.identity;
  const pki = options.pkiDir;
  const caPath = options.ca ?? (pki ? join(pki, "ca.crt") : undefined);
  if (!caPath) throw new Error("the mesh CA is required: pass pkiDir or ca");
  const certPath = options.cert ?? (pki && identity ? join(pki, `${identity}.crt`) : undefined);
  const keyPath = options.key ?? (pki && identity ? join(pki, `${identity}.key`) : undefined);
  if ((certPath === undefined) !== (keyPath === undefined)) throw new Error("cert and key go together");
  const expected = spiffeId(options.trustDomain ?? DEFAULT_TRUST_DOMAIN, service);
  return createGrpcTransport({
    baseUrl: `https://${target}`,
    nodeOptions: {
      ca: readFileSync(caPath),
      ...(certPath && keyPath ? { cert: readFileSync(certPath), key: readFileSync(keyPath) } : {}),
      servername: service,
      minVersion: "TLSv1.3",
      checkServerIdentity: spiffeServerCheck(expected),
    },
    pingIntervalMs: options.pingIntervalMs ?? 30_000,
    pingTimeoutMs: options.pingTimeoutMs ?? 10_000,
    defaultTimeoutMs: options.defaultTimeoutMs ?? 30_000,
  });
}
