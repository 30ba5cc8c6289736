// The server identity rule of the Rust clients (crates/mesh SpiffeServerVerifier): the chain
// verifies against the mesh CA (Node does that), and the certificate carries exactly one URI SAN,
// equal to spiffe://<trust-domain>/<service>. Runs on every TLS connection of the transport.
import type { PeerCertificate } from "node:tls";

export const DEFAULT_TRUST_DOMAIN = "orchestrator.local";
export const SERVICES = ["scaffolder", "secret-broker", "vault", "infra"] as const;
export type ServiceName = (typeof SERVICES)[number];

export function spiffeId(trustDomain: string, service: ServiceName): string {
  return `spiffe://${trustDomain}/${service}`;
}

/** The URI SANs of a peer certificate (`subjectaltname` is "DNS:a, URI:b, IP Address:c"). */
export function uriSans(cert: PeerCertificate): string[] {
  const sans = cert.subjectaltname ?? "";
  return sans
    .split(", ")
    .filter((entry) => entry.startsWith("URI:"))
    .map((entry) => entry.slice("URI:".length));
}

/** The error a refused server identity gives (the connection is closed before any call). */
export class IdentityMismatchError extends Error {
  constructor(
    readonly expected: string,
    readonly found: string[],
  ) {
    super(`server proves ${found.length ? found.join(", ") : "no SPIFFE ID"}, expected ${expected}`);
    this.name = "IdentityMismatchError";
  }
}

/** A `checkServerIdentity` for node:tls that requires `expected` as the only URI SAN. */
export function spiffeServerCheck(expected: string) {
  return (_host: string, cert: PeerCertificate): Error | undefined => {
    const found = uriSans(cert);
    if (found.length !== 1 || found[0] !== expected) {
      return new IdentityMismatchError(expected, found);
    }
    return undefined;
  };
}
