"""Decoding the mesh's errors: `decode(rpc_error)` gives the status code, the message, the
`google.rpc.ErrorInfo` (reason, domain, metadata) and the `google.rpc.BadRequest` field violations
that the services attach (trailer `grpc-status-details-bin`, a `google.rpc.Status`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, Sequence, Union

import grpc
# googleapis-common-protos ships no py.typed: its messages are read field by field below.
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class MeshError(Exception):
    """Base of the errors this package raises itself."""


class IdentityMismatch(MeshError, ConnectionError):
    """The server's certificate does not carry exactly one URI SAN equal to the expected SPIFFE ID."""

    def __init__(self, expected: str, found: Sequence[str]) -> None:
        self.expected = expected
        self.found = list(found)
        super().__init__(f"server proves {self.found or 'no SPIFFE ID'}, expected {expected}")


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = ""


@dataclass(frozen=True)
class DecodedError:
    code: grpc.StatusCode
    message: str
    reason: Optional[str] = None
    domain: Optional[str] = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Sequence[FieldViolation] = ()

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        for v in self.field_violations:
            text += f"\n  {v.field}: {v.description}"
        return text


class _Call(Protocol):
    def code(self) -> grpc.StatusCode: ...
    def details(self) -> Optional[str]: ...


MetadataLike = Union[Sequence[tuple[str, Union[str, bytes]]], None]


def _trailers(error: object) -> MetadataLike:
    getter = getattr(error, "trailing_metadata", None)
    if getter is None:
        return None
    value = getter()
    # grpc.aio.Metadata iterates as (key, value) pairs too.
    return list(value) if value is not None else None


def decode(error: grpc.RpcError) -> DecodedError:
    """The code, message, ErrorInfo and BadRequest of a failed call (sync `grpc.RpcError` or
    `grpc.aio.AioRpcError`). Fields the server did not send are None or empty."""
    call: _Call = error
    code = call.code()
    message = call.details() or ""
    raw: Optional[bytes] = None
    for key, value in _trailers(error) or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            raw = value
    if raw is None:
        return DecodedError(code=code, message=message)
    status = status_pb2.Status.FromString(raw)
    reason = domain = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = str(info.reason), str(info.domain)
            metadata.update({str(k): str(v) for k, v in info.metadata.items()})
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for v in bad.field_violations:
                violations.append(
                    FieldViolation(
                        field=str(v.field),
                        description=str(v.description),
                        reason=str(getattr(v, "reason", "")),
                    )
                )
    return DecodedError(
        code=code,
        message=str(status.message) or message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
    )
