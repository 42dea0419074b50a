"""Scheduler hooks: workers joining and leaving go to the reconciler, their log records on."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Set
from typing import TYPE_CHECKING, Any, Protocol

from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import Scheduler

from azmanagers.agent import LOG_TOPIC
from azmanagers.cluster.reconciler import Reconciler
from azmanagers.errors import ConfigError

if TYPE_CHECKING:
    from azmanagers.cluster.core import AzCluster

LogCallback = Callable[[Mapping[str, Any]], None]


class Workers(Protocol):
    """What the reconciler asks of the scheduler its workers join (none: delete only)."""

    def choose_retirees(self, n: int) -> list[str]:
        """Return the names of ``n`` joined workers to retire (the idlest first)."""
        ...

    async def retire(self, names: Set[str]) -> None:
        """Retire these workers gracefully (bounded in time) before they are deleted."""
        ...


class ClusterHooks(SchedulerPlugin):
    """Runs in the scheduler: tells the reconciler of joins and departures, by instance name,
    and hands the workers' forwarded log records to ``on_log``.

    Parameters
    ----------
    reconciler
        Told ``on_join`` and ``on_leave``.
    on_log
        A bound method called with each ``azmanagers-log`` event; held weakly, so the
        scheduler does not keep its cluster alive.
    """

    name = "azmanagers-hooks"

    def __init__(self, reconciler: Reconciler, on_log: LogCallback) -> None:
        self._reconciler = weakref.ref(reconciler)
        self._on_log = weakref.WeakMethod(on_log)
        self._names: dict[str, str] = {}  # address -> name (gone from the scheduler on removal)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """Record the worker's name and tell the reconciler it joined."""
        reconciler = self._reconciler()
        state = scheduler.workers.get(worker)
        if reconciler is not None and state is not None:
            self._names[worker] = str(state.name)
            reconciler.on_join(str(state.name))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """Tell the reconciler the worker left."""
        reconciler = self._reconciler()
        name = self._names.pop(worker, None)
        if reconciler is not None and name is not None:
            reconciler.on_leave(name)

    def log_event(self, topic: str, msg: Any) -> None:
        """Pass a forwarded worker log record on."""
        if topic != LOG_TOPIC or not isinstance(msg, dict):
            return
        callback = self._on_log()
        if callback is not None:
            callback(msg)


class SchedulerWorkers:
    """The reconciler's view of the scheduler: which workers to retire, and retiring them."""

    def __init__(self, cluster: AzCluster) -> None:
        self._cluster = weakref.ref(cluster)

    def _scheduler(self) -> tuple[Scheduler | None, float]:
        cluster = self._cluster()
        if cluster is None:
            return None, 0.0
        return cluster.scheduler, cluster.settings.retire_timeout_s

    def names_of(self, workers: Iterable[str], instances: Set[str]) -> set[str]:
        """Return the instance names of these workers (names or addresses).

        Raises ConfigError for one that is neither a joined worker nor one of ``instances``.
        """
        cluster = self._cluster()
        scheduler = None if cluster is None else cluster.scheduler
        by_address = {}
        if scheduler is not None:
            by_address = {addr: str(ws.name) for addr, ws in list(scheduler.workers.items())}
        known = set(by_address.values()) | set(instances)
        names = set()
        for w in workers:
            name = by_address.get(str(w), str(w))
            if name not in known:
                raise ConfigError(
                    f"no worker or instance named {w!r} in cluster "
                    f"{'?' if cluster is None else cluster.name}; see cluster.worker_names()."
                )
            names.add(name)
        return names

    def choose_retirees(self, n: int) -> list[str]:
        """The scheduler's choice of the ``n`` idlest workers, by name."""
        scheduler, _ = self._scheduler()
        if scheduler is None:
            return []
        return [str(name) for name in scheduler.workers_to_close(n=n, attribute="name")]

    async def retire(self, names: Set[str]) -> None:
        """Retire gracefully: their data moves to other workers (bounded in time)."""
        scheduler, timeout_s = self._scheduler()
        if scheduler is not None:
            await asyncio.wait_for(
                scheduler.retire_workers(names=sorted(names), close_workers=True, remove=True),
                timeout_s,
            )


def emit_worker_log(msg: Mapping[str, Any]) -> None:
    """Log a forwarded worker record on ``azmanagers.worker.<instance>`` in this process."""
    worker = str(msg.get("instance") or msg.get("worker", "?"))
    levelno = int(msg.get("levelno", logging.INFO))
    target = logging.getLogger(f"azmanagers.worker.{worker}")
    if not target.isEnabledFor(levelno):
        return
    record = logging.makeLogRecord(
        {
            "name": target.name,
            "levelno": levelno,
            "levelname": logging.getLevelName(levelno),
            "msg": "[%s] %s: %s",
            "args": (worker, msg.get("name", "?"), msg.get("msg", "")),
            "created": float(msg.get("created", time.time())),
            "worker": worker,
            "remote_logger": msg.get("name", "?"),
        }
    )
    target.handle(record)
