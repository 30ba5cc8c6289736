// The installed @orchestrator/mesh against a mesh: `orchctl up --port 0` started here
// (ORCH_ORCHCTL, ORCH_POLICY) or one already running (ORCH_STATE_DIR). Run with `node --test`
// from the folder where the package is installed (sdk/typescript/build.sh prepares one).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import {
  Code, IdentityMismatchError, LocalMesh, connect, createClient, decode, vault,
} from "@orchestrator/mesh";

let mesh;
let up;
let state;

before(async () => {
  if (process.env.ORCH_STATE_DIR) {
    mesh = new LocalMesh(process.env.ORCH_STATE_DIR);
    return;
  }
  const orchctl = process.env.ORCH_ORCHCTL;
  assert.ok(orchctl, "set ORCH_ORCHCTL (an orchctl binary) or ORCH_STATE_DIR (a running mesh)");
  state = mkdtempSync(join(tmpdir(), "orch-node-"));
  up = spawn(orchctl, ["up", "--no-build", "--port", "0", "--admin-port", "0", "--state-dir", state,
    "--policy", process.env.ORCH_POLICY ?? "config/policy.toml", "--bin-dir", dirname(orchctl)], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`orchctl up did not come up:\n${lines.join("\n")}`)), 120_000);
    up.on("exit", (code) => reject(new Error(`orchctl up exited (${code}):\n${lines.join("\n")}`)));
    createInterface({ input: up.stdout }).on("line", (line) => {
      lines.push(line);
      if (line.startsWith("Press Ctrl-C")) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  mesh = new LocalMesh(state);
});

after(async () => {
  if (up) {
    const exited = new Promise((resolve) => up.once("exit", resolve));
    up.removeAllListeners("exit");
    up.kill("SIGTERM");
    await exited;
  }
  if (state) rmSync(state, { recursive: true, force: true });
});

const api = () => createClient(vault.VaultService, connect("vault", mesh.target("vault"), { pkiDir: mesh.pkiDir }));

test("vault put then list, as api", async () => {
  const client = api();
  const user = `u-${randomUUID().slice(0, 8)}`;
  for (const key of ["digitalocean/token", "cloudflare/token"]) {
    const put = await client.putUserSecret({ requestId: randomUUID(), userId: user, key, value: new Uint8Array([1, 2, 3]) });
    assert.equal(put.secret?.key, key);
    assert.equal(put.secret?.currentVersion, 1n);
  }
  const listed = await client.listUserSecrets({ userId: user });
  assert.deepEqual(listed.secrets.map((s) => s.key).sort(), ["cloudflare/token", "digitalocean/token"]);
});

test("a refused call is decoded to its reason", async () => {
  await assert.rejects(api().getUserSecret({ userId: "u-1", key: "k", projectId: "p" }), (e) => {
    const err = decode(e);
    assert.equal(err.code, Code.PermissionDenied);
    assert.equal(err.codeName, "PERMISSION_DENIED");
    assert.equal(err.reason, "RPC_NOT_ALLOWED");
    assert.equal(err.metadata.caller, "spiffe://orchestrator.local/api");
    assert.equal(err.metadata.method, "/orchestrator.vault.v1.VaultService/GetUserSecret");
    return true;
  });
});

test("field violations are decoded", async () => {
  await assert.rejects(
    api().putUserSecret({ requestId: randomUUID(), userId: "u-1", key: "no spaces!", value: new Uint8Array([1]) }),
    (e) => {
      const err = decode(e);
      assert.equal(err.code, Code.InvalidArgument);
      assert.deepEqual(err.fieldViolations.map((v) => v.field), ["key"]);
      return true;
    },
  );
});

test("a channel without a client certificate is refused", async () => {
  const client = createClient(vault.VaultService,
    connect("vault", mesh.target("vault"), { ca: join(mesh.pkiDir, "ca.crt"), identity: null }));
  await assert.rejects(client.listUserSecrets({ userId: "u-1" }), (e) => {
    // Refused in the TLS handshake (connect-node reports it as Internal): no call reached the vault.
    const err = decode(e);
    assert.ok([Code.Unavailable, Code.Internal].includes(err.code), String(e));
    assert.match(err.message, /certificate required/);
    return true;
  });
});

test("a server with another identity is refused", async () => {
  // infra's address, presented as the vault: its certificate proves spiffe://.../infra.
  const client = createClient(vault.VaultService, connect("vault", mesh.target("infra"), { pkiDir: mesh.pkiDir }));
  await assert.rejects(client.listUserSecrets({ userId: "u-1" }), (e) => {
    const err = decode(e);
    assert.ok([Code.Unavailable, Code.Internal].includes(err.code), String(e));
    assert.equal(err.message, "server proves spiffe://orchestrator.local/infra, expected spiffe://orchestrator.local/vault");
    assert.ok(e.cause instanceof IdentityMismatchError, String(e.cause));
    return true;
  });
});

test("the example runs", async () => {
  const out = await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["dist/examples/vault_put_list.js"], {
      env: { ...process.env, ORCH_STATE_DIR: mesh.stateDir }, stdio: ["ignore", "pipe", "inherit"],
    });
    let text = "";
    child.stdout.on("data", (d) => { text += d; });
    child.on("exit", (code) => (code === 0 ? resolve(text) : reject(new Error(`exit ${code}: ${text}`))));
  });
  assert.match(out, /GetUserSecret as api: PERMISSION_DENIED reason=RPC_NOT_ALLOWED/);
});
