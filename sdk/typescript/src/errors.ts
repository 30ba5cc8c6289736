// Decoding the mesh's errors: the status code, the message, the google.rpc.ErrorInfo (reason,
// domain, metadata) and google.rpc.BadRequest field violations the services attach.
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";

export interface FieldViolation {
  field: string;
  description: string;
  reason: string;
}

export interface DecodedError {
  code: Code;
  /** The code's name as gRPC spells it, e.g. "PERMISSION_DENIED". */
  codeName: string;
  message: string;
  reason?: string;
  domain?: string;
  metadata: Record<string, string>;
  fieldViolations: FieldViolation[];
}

function grpcName(code: Code): string {
  return (Code[code] ?? "Unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Decodes what a failed call threw (a ConnectError, or anything ConnectError.from accepts). */
export function decode(error: unknown): DecodedError {
  const err = ConnectError.from(error);
  const decoded: DecodedError = {
    code: err.code,
    codeName: grpcName(err.code),
    message: err.rawMessage,
    metadata: {},
    fieldViolations: [],
  };
  const [info] = err.findDetails(ErrorInfoSchema);
  if (info) {
    decoded.reason = info.reason;
    decoded.domain = info.domain;
    decoded.metadata = { ...info.metadata };
  }
  for (const bad of err.findDetails(BadRequestSchema)) {
    for (const v of bad.fieldViolations) {
      decoded.fieldViolations.push({ field: v.field, description: v.description, reason: v.reason });
    }
  }
  return decoded;
}
