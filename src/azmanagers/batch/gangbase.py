"""What the gangs of multi-node runs share: announcements from nodes, held workers, outcomes."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from azmanagers.batch.flights import attempt_of, tell_workers, worker_gone
from azmanagers.batch.plan import Plan
from azmanagers.batch.processes import cancel_session
from azmanagers.batch.records import Attempt
from azmanagers.batch.runner import RunResult, RunTask, not_started
from azmanagers.errors import BatchError
from azmanagers.storage.base import Grant

logger = logging.getLogger("azmanagers.batch")

STEP_S = 0.05
"""How often a gang looks at its futures and its inbox while it waits (events wake it)."""
ALIVE_EVERY_S = 1.0
"""How often a gang asks the scheduler which workers are still there (a task pinned to a
worker that died never ends on its own: the scheduler keeps it waiting for that worker)."""
MEMBERS_END_S = 60.0
"""How long a gang's other members get to stop, store their logs and report."""


class Announcements:
    """The driver's one subscription to its nodes' Dask events, sorted into one inbox per gang."""

    def __init__(self, client: Any, topic: str) -> None:
        self.client = client
        self.topic = topic
        self._lock = threading.Lock()
        self._inboxes: dict[str, queue.Queue[dict[str, Any]]] = {}
        client.subscribe_topic(topic, self._on_event)

    def _on_event(self, event: Any) -> None:
        message = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if not isinstance(message, dict):
            return
        with self._lock:
            inbox = self._inboxes.get(str(message.get("gang", "")))
        if inbox is not None:
            inbox.put(message)

    def open(self, gang: str) -> queue.Queue[dict[str, Any]]:
        with self._lock:
            return self._inboxes.setdefault(gang, queue.Queue())

    def discard(self, gang: str) -> None:
        with self._lock:
            self._inboxes.pop(gang, None)

    def close(self) -> None:
        try:
            self.client.unsubscribe_topic(self.topic)
        except Exception as exc:  # the client is closing: nothing more will come
            logger.debug("could not unsubscribe from %s: %r", self.topic, exc)


@dataclass
class GangContext:
    """What a gang needs from its driver."""

    client: Any
    plan: Plan
    session: str
    grant: Callable[[], Grant]
    announcements: Announcements
    stopping: threading.Event
    """Set when the job is cancelled (or taken over): gangs stop their members and return."""
    live_sessions: set[str] = field(default_factory=set)
    """The sessions of the gangs running now (what a cancel must reach)."""
    held: set[str] = field(default_factory=set)
    """Workers held by this driver's MPI gangs."""
    names: dict[str, str] = field(default_factory=dict)
    """Worker addresses and their names (nodes), as last seen: a lost one keeps its name."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per master/worker run: (master's command started, last worker's command started)."""

    def workers(self) -> dict[str, dict[str, Any]]:
        """The scheduler's workers now (address -> its info); {} when it cannot be asked (a
        hiccup: the next look decides)."""
        try:
            workers = dict(self.client.scheduler_info(n_workers=-1).get("workers", {}))
            self.names.update({a: str(info.get("name", a)) for a, info in workers.items()})
            return workers
        except Exception as exc:
            logger.warning("could not ask the scheduler for its workers: %r", exc)
            return {}

    def alive(self) -> set[str]:
        """The addresses of the workers the scheduler has now."""
        return set(self.workers())

    def alive_names(self) -> set[str]:
        """The names (nodes) of the workers the scheduler has now."""
        return {str(info.get("name")) for info in self.workers().values()}

    def tell(self, fn: Callable[..., Any], *args: Any, workers: Iterable[str]) -> None:
        """Run ``fn(*args)`` in the worker processes ``workers`` (those still there)."""
        addresses = list(workers)
        if not addresses:
            return
        try:
            self.client.run(fn, *args, workers=addresses, on_error="ignore")
        except Exception as exc:  # a worker that went away cannot be told
            logger.warning("could not reach every member of a gang: %r", exc)

    def cancel(self, session: str, workers: Iterable[str] | None = None) -> None:
        """Kill the runs of ``session`` (a gang's) on ``workers`` (default: every worker)."""
        if workers is None:
            tell_workers(self.client, session)
        else:
            self.tell(cancel_session, session, workers=workers)


def outcome(future: Any, task: RunTask, node: str = "") -> RunResult:
    """A finished member future's result; a lost worker or a runner error as a result (on
    ``node``, when known: the driver's machine is not it)."""
    node = node or "-"
    if future.cancelled():
        return not_started(task, "cancelled", node=node, error="cancelled")
    try:
        result = future.result()
    except Exception as exc:
        if worker_gone(exc):
            return not_started(task, "lost", node=node, error=f"its worker was lost: {exc!r}")
        return not_started(task, "error", node=node, error=f"the runner failed: {exc!r}")
    if isinstance(result, RunResult):
        return result
    raise BatchError(f"a gang member returned {type(result).__name__}, not a RunResult")


def end_members(pending: dict[Any, RunTask], deadline_s: float = MEMBERS_END_S) -> list[RunResult]:
    """Wait (bounded) for the members told to stop; those that never report count as lost."""
    results = []
    deadline = time.monotonic() + deadline_s
    for future, task in pending.items():
        left = max(0.0, deadline - time.monotonic())
        with contextlib.suppress(Exception):
            future.result(timeout=left)
        if future.done():
            results.append(outcome(future, task))
        else:
            future.cancel()
            results.append(
                not_started(task, "lost", error="it did not report after the gang ended")
            )
    return results


def member_attempts(results: Iterable[RunResult]) -> tuple[Attempt, ...]:
    """The members' outcomes as the run record keeps them."""
    return tuple(attempt_of(r) for r in results)


def as_run_result(primary: RunResult, members: Iterable[RunResult], **changes: Any) -> RunResult:
    """The run's result: its primary's (or master's), with its members and ``changes``."""
    return replace(primary, members=member_attempts(members), **changes)
