"""The error latch: the last error a reconciler recorded, for the waits begun before it."""

from __future__ import annotations

import logging
import threading

from azmanagers.errors import AzManagersError

logger = logging.getLogger("azmanagers.cluster")


class ErrorLatch:
    """Holds the error that spent the replacement budget (or the provider's), numbered so
    that a wait raises only errors recorded after it began; a new intent clears it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._error: AzManagersError | None = None
        self._seq = 0

    def set(self, error: AzManagersError) -> None:
        """Record ``error`` (and log it)."""
        with self._lock:
            self._error = error
            self._seq += 1
        logger.error("%s", error)

    def clear(self) -> None:
        """Forget the error: a new target no longer answers to it."""
        with self._lock:
            self._error = None

    def seq(self) -> int:
        """A counter that grows with every recorded error."""
        with self._lock:
            return self._seq

    def since(self, seq: int) -> AzManagersError | None:
        """The current error if it was recorded after ``seq()`` returned ``seq``."""
        with self._lock:
            return self._error if self._seq > seq else None

    @property
    def current(self) -> AzManagersError | None:
        """The current error, if any."""
        with self._lock:
            return self._error
