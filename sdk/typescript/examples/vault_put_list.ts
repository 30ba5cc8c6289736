// Puts a user's secret into the vault and lists the user's keys, as `api`; then shows the
// vault refusing `api` a plaintext, decoded.
//   orchctl up --state-dir .orchestrator --port 0 --admin-port 0     # in another terminal
//   ORCH_STATE_DIR=.orchestrator node dist/examples/vault_put_list.js [user]
import { randomUUID } from "node:crypto";
import { LocalMesh, connect, createClient, decode, vault } from "@orchestrator/mesh";

const user = process.argv[2] ?? "u-example";
const mesh = new LocalMesh();
const client = createClient(
  vault.VaultService,
  connect("vault", mesh.target("vault"), { pkiDir: mesh.pkiDir, identity: "api" }),
);

const put = await client.putUserSecret({
  requestId: randomUUID(),
  userId: user,
  key: "digitalocean/token",
  value: new TextEncoder().encode("dop_v1_example"),
});
console.log(`put ${put.secret?.key} version ${put.secret?.currentVersion}`);
const listed = await client.listUserSecrets({ userId: user });
for (const s of listed.secrets) {
  console.log(`  ${s.key.padEnd(24)} v${s.currentVersion}`);
}
try {
  await client.getUserSecret({ userId: user, key: "digitalocean/token" });
} catch (e) {
  const err = decode(e);
  console.log(`GetUserSecret as api: ${err.codeName} reason=${err.reason} caller=${err.metadata.caller}`);
}
