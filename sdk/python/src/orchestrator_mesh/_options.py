"""Channel options: keepalive, an optional retry policy, and the TLS name gRPC verifies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence, Union

ChannelOption = tuple[str, Union[str, int]]


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 pings so a dead peer is noticed (defaults match the Rust clients' spirit: 30 s pings,
    10 s to answer, also while no call is open)."""

    time_ms: int = 30_000
    timeout_ms: int = 10_000
    permit_without_calls: bool = True


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retries (service config). Off unless passed: retry only calls that are safe to
    repeat (reads, or writes with a request id such as CreateProject and ProvisionServer)."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 3.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: Sequence[str] = ("UNAVAILABLE",)

    def service_config(self) -> str:
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{}],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff_s}s",
                            "maxBackoff": f"{self.max_backoff_s}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": list(self.retryable_status_codes),
                        },
                    }
                ]
            }
        )


def channel_options(
    service: str,
    keepalive: Optional[Keepalive],
    retry: Optional[RetryPolicy],
    extra: Sequence[ChannelOption],
) -> list[ChannelOption]:
    opts: list[ChannelOption] = [("grpc.ssl_target_name_override", service)]
    if keepalive is not None:
        opts += [
            ("grpc.keepalive_time_ms", keepalive.time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(keepalive.permit_without_calls)),
        ]
    if retry is not None:
        opts += [("grpc.enable_retries", 1), ("grpc.service_config", retry.service_config())]
    else:
        opts += [("grpc.enable_retries", 0)]
    return opts + list(extra)
