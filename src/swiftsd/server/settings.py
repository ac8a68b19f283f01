"""A server's limits and options, parsed once from the command line."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class ServerSettings:
    """Limits and options of one server."""

    max_queue: int = 64  # requests waiting behind the running one; beyond -> 429
    request_timeout: float = 300.0  # seconds from arrival; past it -> 503 (queued) / 504 (running)
    api_key: str | None = None  # when set, /v1/* and /metrics need "Authorization: Bearer <key>"
    max_body_bytes: int = 8 << 20  # larger request bodies -> 413, whatever the transfer encoding
    read_timeout: float = 30.0  # seconds for a request's headers, and again for its body -> 408 and a close
    skip_set_store: str | None = None  # save the optimiser's best set here on shutdown
    task: str = "default"
    aliases: tuple[str, ...] = ()  # other names the "model" field may use (e.g. the model's identity)
    state_path: str | None = None  # --state: the decoder's learned state, saved every interval and on shutdown
    state_interval: float = 60.0  # seconds between saves (0: only on shutdown)

    def __post_init__(self) -> None:
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise InvalidArgumentError(f"--max-queue must be an integer >= 0, got {self.max_queue!r}")
        t = self.request_timeout
        if not isinstance(t, (int, float)) or math.isnan(t) or t <= 0:
            raise InvalidArgumentError(f"--request-timeout must be a positive number of seconds, got {t!r}")
        r = self.read_timeout
        if not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
            raise InvalidArgumentError(f"--read-timeout must be a positive number of seconds, got {r!r}")
        b = self.max_body_bytes
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise InvalidArgumentError(f"--max-body-bytes must be an integer >= 1, got {b!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidArgumentError("--api-key is empty: give a non-empty key or leave the option out")
        s = self.state_interval
        if not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
            raise InvalidArgumentError(f"--state-interval must be a number of seconds >= 0 (0: save only on "
                                       f"shutdown), got {s!r}")
