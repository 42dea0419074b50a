"""What goes wrong in a Reconciler's pool: failed instances (the replacement budget),
evictions, and reconcile cycles that fail."""

from __future__ import annotations

import collections
import logging

from azmanagers.cluster.latch import ErrorLatch
from azmanagers.cluster.waits import indent
from azmanagers.errors import InstanceFailedError, ProviderError

logger = logging.getLogger("azmanagers.cluster")

FAILURE_RECORDS = 200
FAILURE_WINDOW_S = 600.0
"""Failures older than this no longer count against the replacement budget."""
PROVIDER_FAILED_CYCLES = 20
"""Consecutive failed reconcile cycles after which waits raise the provider's error."""


class Failures:
    """The failed instances of one pool and the replacement budget they spend, the instances
    evicted, and the streak of failed reconcile cycles; ``errors`` gets the error waits raise
    when the budget or the provider runs out.

    Parameters
    ----------
    name
        The cluster's name, for messages.
    max_replacements
        Failed instances replaced per ``FAILURE_WINDOW_S``.
    errors
        Where the error for waits is set.
    """

    def __init__(self, name: str, max_replacements: int, errors: ErrorLatch) -> None:
        self.name = name
        self.max_replacements = max_replacements
        self.errors = errors
        self.records: collections.deque[tuple[str, str, str]] = collections.deque(
            maxlen=FAILURE_RECORDS
        )
        """(instance, reason, boot-log tail) of the instances that failed, newest last."""
        self.evicted: list[str] = []
        """Instances that disappeared without our asking (spot evictions), oldest first."""
        self._times: collections.deque[float] = collections.deque()
        self._failed_cycles = 0

    def instance_failed(self, instance: str, reason: str, tail: str, now: float) -> None:
        """Record a failed instance (it counts against the budget from ``now``)."""
        self.records.append((instance, reason, tail))
        self._times.append(now)
        logger.warning("cluster %s: instance %s failed: %s", self.name, instance, reason)

    def replacements_left(self, now: float) -> int:
        """How many failed instances may still be replaced (failures in the window count)."""
        while self._times and now - self._times[0] > FAILURE_WINDOW_S:
            self._times.popleft()
        return self.max_replacements - len(self._times)

    def budget_spent(self, aim: int) -> None:
        """Set the error for a spent budget: the last failure, and the target now ``aim``."""
        instance, reason, tail = self.records[-1]
        self.errors.set(
            InstanceFailedError(
                f"instance {instance} of cluster {self.name} failed ({reason}) and the "
                f"replacement budget ({self.max_replacements} per "
                f"{FAILURE_WINDOW_S:.0f} s) is spent; the cluster now aims at {aim} "
                f"workers. End of its boot log:\n{indent(tail)}",
                instance=instance,
                log_tail=tail,
            )
        )

    def vanished(self, names: list[str], *, replace: bool) -> None:
        """Record instances gone without our asking (evicted, or deleted by someone else)."""
        self.evicted.extend(names)
        logger.warning(
            "cluster %s: %s vanished (evicted?); %s",
            self.name,
            ", ".join(names),
            "replacing them" if replace else "not replacing them",
        )

    def cycle_succeeded(self) -> None:
        """End the streak of failed cycles."""
        self._failed_cycles = 0

    def cycle_failed(self, exc: Exception) -> None:
        """Log a failed cycle; after ``PROVIDER_FAILED_CYCLES`` in a row, set the error."""
        self._failed_cycles += 1
        logger.warning(
            "cluster %s: reconcile cycle failed (%d in a row): %s",
            self.name,
            self._failed_cycles,
            exc,
            exc_info=self._failed_cycles == 1,
        )
        if self._failed_cycles == PROVIDER_FAILED_CYCLES:
            self.errors.set(
                ProviderError(
                    f"cluster {self.name}: the provider failed {PROVIDER_FAILED_CYCLES} "
                    f"reconcile cycles in a row; the last error: {exc}"
                )
            )
