"""A cluster's target, checked against its template's limit and the provider's quota first."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from azmanagers.cluster.reconciler import Reconciler
from azmanagers.config.settings import ClusterSettings
from azmanagers.errors import AzManagersError, ConfigError
from azmanagers.providers.base import Provider

logger = logging.getLogger("azmanagers.cluster")


class CheckedScaling:
    """Sets a Reconciler's target once the template's ``max_instances`` and the provider's
    quota allow it.

    Dask's adaptive scaling calls ``scale`` from the event loop: there the quota check (ARM
    calls) runs in a thread and the target is set afterwards, unless a newer request came in
    meanwhile; the loop (heartbeats, tasks) never waits for Azure.

    Parameters
    ----------
    name
        The cluster's name, for messages.
    template_name
        The scale-set template, for messages.
    template
        The template the provider checks the quota for.
    provider
        Where instances come from.
    settings
        ``max_instances`` and the priority (spot or regular) the quota is checked for.
    reconciler
        Whose target is set, and whose gate the provider calls go through.
    """

    def __init__(
        self,
        name: str,
        template_name: str,
        template: Mapping[str, Any],
        provider: Provider,
        settings: ClusterSettings,
        reconciler: Reconciler,
    ) -> None:
        self.name = name
        self.template_name = template_name
        self.template = template
        self.provider = provider
        self.settings = settings
        self.reconciler = reconciler
        self._lock = threading.Lock()
        self._seq = 0
        self._pending_checks: set[asyncio.Future[None]] = set()

    def check_limit(self, n: int) -> None:
        """ConfigError when ``n`` instances exceed the template's ``max_instances``."""
        if n > self.settings.max_instances:
            raise ConfigError(
                f"template {self.template_name!r} allows at most {self.settings.max_instances} "
                f"instances (asked for {n}); raise max_instances in the template."
            )

    def check_capacity(self, add: int) -> None:
        """Ask the provider whether ``add`` more instances fit the quota (raises if not)."""
        if add <= 0:
            return
        self.reconciler.gate.call(
            "checking the quota",
            self.provider.check_capacity,
            self.template,
            add,
            current=self.reconciler.target,
            priority=self.settings.priority(),
        )

    def scale_to(self, n: int) -> None:
        """Make ``n`` the target once the quota allows it (checked off the loop on the loop)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        if on_running_loop() and n > self.reconciler.target:
            # adapt() scales from the event loop: check the quota (ARM calls) in a thread,
            # then record the target; the loop (heartbeats, tasks) never waits for Azure
            task = asyncio.ensure_future(self._scale_after_check(n, seq))
            self._pending_checks.add(task)
            task.add_done_callback(self._pending_checks.discard)
            return
        self.check_capacity(n - self.reconciler.target)
        self.reconciler.set_target(n)

    async def _scale_after_check(self, n: int, seq: int) -> None:
        """Check the quota for growing to ``n`` off the loop, then make ``n`` the target
        (unless a newer ``scale`` came in meanwhile)."""
        try:
            await asyncio.to_thread(self.check_capacity, n - self.reconciler.target)
        except AzManagersError as exc:
            logger.warning("cluster %s: not scaling to %d workers: %s", self.name, n, exc)
            self.reconciler.errors.set(exc)
            return
        with self._lock:
            if seq != self._seq:
                return
        self.reconciler.set_target(n)


def on_running_loop() -> bool:
    """Tell whether the caller runs on an event loop (Dask's adaptive scaling does)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
