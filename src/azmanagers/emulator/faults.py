"""Fault injection for the emulator: throttling, server errors, failing and stuck VMs."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any

from azmanagers.emulator.server import ArmError

NEVER_JOIN_SCRIPT = (
    "#!/bin/bash\necho 'emulator: this VM boots but never starts its agent'\nexec sleep 86400\n"
)


@dataclass
class Faults:
    """What the emulator does wrong, on purpose. Change it from Python or the admin route.

    Attributes
    ----------
    throttle_rate
        Fraction of ARM requests answered 429 with ``Retry-After: retry_after_s``.
    error_rate
        Fraction answered 503 (a transient server error).
    retry_after_s
        The Retry-After of throttled answers.
    fail_provisioning
        The next this-many new VMs end in provisioning state Failed (and never boot).
    never_join
        The next this-many new VMs boot a script that never starts the agent.
    family_cores_limit, regional_cores_limit
        The vCPU quota of every VM family, and of the region, that usages report.
    """

    throttle_rate: float = 0.0
    error_rate: float = 0.0
    retry_after_s: int = 1
    fail_provisioning: int = 0
    never_join: int = 0
    family_cores_limit: int = 350
    regional_cores_limit: int = 1000
    seed: int = 1
    injected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def update(self, values: dict[str, Any]) -> dict[str, Any]:
        """Set fault knobs from a JSON object; return the current settings."""
        allowed = {
            f.name: f for f in fields(self) if not f.name.startswith("_") and f.name != "injected"
        }
        with self._lock:
            for key, value in values.items():
                if key not in allowed:
                    raise ArmError(
                        400, "InvalidParameter", f"unknown fault {key!r}; known: {sorted(allowed)}"
                    )
                kind = type(getattr(self, key))
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                    raise ArmError(400, "InvalidParameter", f"fault {key} must be a number >= 0")
                setattr(self, key, kind(value))
            if "seed" in values:
                self._rng.seed(self.seed)
            return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """Return the knobs and how many faults of each kind were injected."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["injected"] = dict(self.injected)
        return out

    def _count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def maybe_fail_request(self) -> None:
        """Raise a 429 or 503 ArmError, at the configured rates."""
        with self._lock:
            roll = self._rng.random()
            if roll < self.throttle_rate:
                self._count("throttled")
                raise ArmError(
                    429,
                    "TooManyRequests",
                    "The request is being throttled.",
                    headers={
                        "Retry-After": str(self.retry_after_s),
                        "x-ms-ratelimit-remaining-resource": "Microsoft.Compute/HighCostGet3Min;0",
                    },
                )
            if roll < self.throttle_rate + self.error_rate:
                self._count("server_error")
                raise ArmError(503, "ServiceUnavailable", "The service is temporarily unavailable.")

    def take_vm_fault(self) -> str | None:
        """For a new VM: 'fail', 'never_join' or None."""
        with self._lock:
            if self.fail_provisioning > 0:
                self.fail_provisioning -= 1
                self._count("failed_provisioning")
                return "fail"
            if self.never_join > 0:
                self.never_join -= 1
                self._count("never_join")
                return "never_join"
            return None
