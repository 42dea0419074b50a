"""The throttle gate: after a ThrottledError, no provider call until its Retry-After passes."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from azmanagers.errors import ThrottledError

logger = logging.getLogger("azmanagers.cluster")

THROTTLE_MIN_PAUSE_S = 1.0
"""The pause after a throttled call that named no Retry-After."""

T = TypeVar("T")


class ThrottleGate:
    """Every provider call of one cluster goes through here.

    A ``ThrottledError`` (a 429: the subscription's request budget is spent) closes the gate
    for its ``retry_after_s``: calls made meanwhile raise ``ThrottledError`` at once, without
    reaching the provider. Entering a pause is logged once.

    Parameters
    ----------
    name
        The cluster's name, for messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._until = 0.0

    def throttled_for_s(self) -> float:
        """Seconds until the provider may be called again (0 when it may be now)."""
        return max(0.0, self._until - time.monotonic())

    def call(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Call ``fn`` unless the gate is closed; ``what`` says what the call does."""
        left_s = self.throttled_for_s()
        if left_s > 0:
            raise ThrottledError(
                f"cluster {self.name}: not {what}: the provider asked us to wait, "
                f"{left_s:.0f} s more; try again then.",
                retry_after_s=left_s,
            )
        try:
            return fn(*args, **kwargs)
        except ThrottledError as exc:
            pause_s = max(exc.retry_after_s, THROTTLE_MIN_PAUSE_S)
            with self._lock:
                starts = self.throttled_for_s() == 0
                self._until = max(self._until, time.monotonic() + pause_s)
            if starts:
                logger.warning(
                    "cluster %s: the provider is throttling us while %s (%s); no provider "
                    "calls for %.0f s",
                    self.name,
                    what,
                    exc,
                    pause_s,
                )
            raise

    async def acall(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """``call`` in a thread: the event loop never waits for the provider."""
        return await asyncio.to_thread(functools.partial(self.call, what, fn, *args, **kwargs))
