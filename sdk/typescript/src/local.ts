// A mesh started by `orchctl up` on this machine: its address files (so --port 0 works) and PKI.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SERVICES, type ServiceName } from "./tls.js";

export class LocalMesh {
  readonly stateDir: string;
  constructor(stateDir?: string) {
    this.stateDir = stateDir ?? process.env.ORCH_STATE_DIR ?? ".orchestrator";
  }
  get pkiDir(): string {
    return join(this.stateDir, "pki");
  }
  /** host:port of `service`'s gRPC listener, from <stateDir>/run/<service>.json. */
  target(service: ServiceName): string {
    if (!SERVICES.includes(service)) throw new Error(`unknown service ${service}`);
    const file = join(this.stateDir, "run", `${service}.json`);
    const { grpc } = JSON.parse(readFileSync(file, "utf8")) as { grpc: string };
    return grpc.replace(/^0\.0\.0\.0:/, "127.0.0.1:").replace(/^\[::\]:/, "[::1]:");
  }
}
