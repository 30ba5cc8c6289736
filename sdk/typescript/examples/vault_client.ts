// Calls the vault over mutual TLS with the generated service descriptor and Connect's gRPC
// transport. Build and run (after ../generate.sh, from sdk/typescript):
//   npm run build && ORCH_TARGET=127.0.0.1:PORT \
//   ORCH_CA=ca.crt ORCH_CERT=api.crt ORCH_KEY=api.key node dist/examples/vault_client.js
import { readFileSync } from "node:fs";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { VaultService } from "../gen/orchestrator/vault/v1/vault_pb.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required`);
  return value;
}

// gRPC over HTTP/2 + TLS with a client certificate; `servername` is the name the server
// certificate must carry (its DNS SANs are the service name and `localhost`).
const transport = createGrpcTransport({
  baseUrl: `https://${env("ORCH_TARGET")}`,
  nodeOptions: {
    ca: readFileSync(env("ORCH_CA")),
    cert: readFileSync(env("ORCH_CERT")),
    key: readFileSync(env("ORCH_KEY")),
    servername: process.env.ORCH_SERVER_NAME ?? "localhost",
  },
});
const vault = createClient(VaultService, transport);

try {
  const res = await vault.listUserSecrets({ userId: "u-1" });
  console.log(`ListUserSecrets: OK, ${res.secrets.length} secrets`);
} catch (e) {
  const err = ConnectError.from(e);
  console.log(`ListUserSecrets: ${Code[err.code]}: ${err.rawMessage}`);
}
