"""Fault injection for the emulator: throttling, server errors, failing and stuck VMs."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any

from azmanagers.emulator.ratelimits import DEFAULT_LIMITS, RateLimits
from azmanagers.emulator.server import ArmError

NEVER_JOIN_SCRIPT = (
    "#!/bin/bash\necho 'emulator: this VM boots but never starts its agent'\nexec sleep 86400\n"
)

_NOT_KNOBS = ("injected", "limits", "_lock", "_rng")


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
    slow_boot, slow_boot_s
        The next ``slow_boot`` new VMs wait ``slow_boot_s`` seconds before their custom
        data runs (a slow allocation or image pull).
    family_cores_limit, regional_cores_limit, spot_cores_limit
        The vCPU quota of every VM family, of the region, and of the region's spot VMs
        (``lowPriorityCores``: spot VMs count there only), that usages report.
    idle_scaleset_instances
        When not 0, scale-set instances are made but run nothing (stand-alone VMs still
        run their custom data): ARM's calls at a size that would not boot on one machine.
    limits
        ARM's per-hour subscription limits; set them with ``reads_per_hour``,
        ``writes_per_hour`` and ``deletes_per_hour`` (a 429 once spent).
    """

    throttle_rate: float = 0.0
    error_rate: float = 0.0
    retry_after_s: int = 1
    fail_provisioning: int = 0
    never_join: int = 0
    slow_boot: int = 0
    slow_boot_s: float = 30.0
    idle_scaleset_instances: int = 0
    family_cores_limit: int = 350
    regional_cores_limit: int = 1000
    spot_cores_limit: int = 1000
    seed: int = 1
    injected: dict[str, int] = field(default_factory=dict)
    limits: RateLimits = field(default_factory=RateLimits, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def update(self, values: dict[str, Any]) -> dict[str, Any]:
        """Set fault knobs from a JSON object; return the current settings."""
        allowed = {f.name: f for f in fields(self) if f.name not in _NOT_KNOBS}
        with self._lock:
            for key, value in values.items():
                kind_of_limit = key.removesuffix("_per_hour")
                if key.endswith("_per_hour") and kind_of_limit in DEFAULT_LIMITS:
                    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                        raise ArmError(400, "InvalidParameter", f"{key} must be a whole number")
                    self.limits.set_limit(kind_of_limit, value)
                    continue
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
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_KNOBS}
        out["injected"] = dict(self.injected)
        out.update({f"{kind}_per_hour": n for kind, n in self.limits.limits.items()})
        return out

    def _count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def maybe_fail_request(self, method: str) -> dict[str, str]:
        """Count the request against ARM's limits and return its rate-limit header; raise a
        429 when they are spent, or a 429 or 503 at the configured rates."""
        headers = self.limits.admit(method)
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
        return headers

    def take_vm_fault(self) -> str | None:
        """For a new VM: 'fail', 'never_join', 'slow_boot' or None."""
        with self._lock:
            if self.fail_provisioning > 0:
                self.fail_provisioning -= 1
                self._count("failed_provisioning")
                return "fail"
            if self.never_join > 0:
                self.never_join -= 1
                self._count("never_join")
                return "never_join"
            if self.slow_boot > 0:
                self.slow_boot -= 1
                self._count("slow_boot")
                return "slow_boot"
            return None

    def slowed(self, custom_data: str) -> str:
        """Return ``custom_data`` behind a wait of ``slow_boot_s`` seconds."""
        delay = f"{self.slow_boot_s:g}"
        return (
            f"#!/bin/bash\necho 'emulator: a slow boot ({delay} s)'\nsleep {delay}\n{custom_data}"
        )
