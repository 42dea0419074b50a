"""ARM's subscription request limits: remaining-count headers on every answer, 429 when spent.

Azure Resource Manager allows a principal, per subscription and hour, 12,000 reads, 1,200
writes and 15,000 deletes, and reports what is left in ``x-ms-ratelimit-remaining-
subscription-{reads,writes,deletes}``. The emulator counts in fixed one-hour windows.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from azmanagers.emulator.server import ArmError

WINDOW_S = 3600.0
DEFAULT_LIMITS = {"reads": 12_000, "writes": 1_200, "deletes": 15_000}
HEADER = "x-ms-ratelimit-remaining-subscription-{kind}"


def request_kind(method: str) -> str:
    """Return the ARM limit a request counts against: reads, writes or deletes."""
    method = method.upper()
    if method in ("GET", "HEAD"):
        return "reads"
    return "deletes" if method == "DELETE" else "writes"


@dataclass
class RateLimits:
    """Per-hour request counts against ARM's subscription limits (one subscription's worth)."""

    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    _used: dict[str, int] = field(default_factory=dict)
    _window_start: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, method: str) -> dict[str, str]:
        """Count a request; return its rate-limit header, or raise a 429 once the hour's
        allowance is spent (with Retry-After: the seconds until the window ends)."""
        kind = request_kind(method)
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= WINDOW_S:
                self._window_start, self._used = now, {}
            limit = self.limits.get(kind, DEFAULT_LIMITS[kind])
            used = self._used.get(kind, 0)
            if used >= limit:
                wait_s = math.ceil(self._window_start + WINDOW_S - now)
                raise ArmError(
                    429,
                    "SubscriptionRequestsThrottled",
                    f"Number of '{kind}' requests for subscription exceeded the limit of "
                    f"{limit} for the hour. Please try again after {wait_s} seconds.",
                    headers={"Retry-After": str(wait_s), HEADER.format(kind=kind): "0"},
                )
            self._used[kind] = used + 1
            return {HEADER.format(kind=kind): str(limit - used - 1)}

    def set_limit(self, kind: str, per_hour: int) -> None:
        """Change one limit (reads, writes or deletes) for the rest of the window."""
        if kind not in DEFAULT_LIMITS:
            raise ArmError(400, "InvalidParameter", f"unknown limit {kind!r}")
        with self._lock:
            self.limits[kind] = per_hour
