"""A master/worker run (the BeoPEST pattern): the master first, its workers the moment it starts."""

from __future__ import annotations

import logging
import queue
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from azmanagers.batch.flights import Flight
from azmanagers.batch.gangbase import (
    ALIVE_EVERY_S,
    STEP_S,
    GangContext,
    as_run_result,
    end_members,
    outcome,
)
from azmanagers.batch.multinode import MasterWorker
from azmanagers.batch.runner import RunResult, RunTask, execute, not_started
from azmanagers.errors import BatchError

logger = logging.getLogger("azmanagers.batch")

MAX_REPLACEMENTS_PER_WORKER = 3
"""A worker run whose node is lost is started again elsewhere at most this many times."""
WORKER_PRIORITY = 10
"""Dask priority of worker runs over masters: a started master's workers go first."""


@dataclass
class _Gang:
    """One attempt of a master/worker run as it goes."""

    ctx: GangContext
    flight: Flight
    model: MasterWorker
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    workers: dict[Any, RunTask] = field(default_factory=dict)
    finished: list[RunResult] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    replaced: int = 0

    @property
    def gang(self) -> str:
        return f"{self.ctx.session}-{self.flight.spec.run_id}-{self.flight.attempt}-{self.tag}"

    @property
    def master_session(self) -> str:
        return f"{self.ctx.session}.{self.tag}"

    @property
    def worker_session(self) -> str:
        return f"{self.ctx.session}.{self.tag}w"


def run_master_worker(ctx: GangContext, flight: Flight) -> RunResult:
    """Run one master/worker run and return the master's result (its exit code is the run's),
    with the workers' outcomes as its members.

    The master's command announces its start (a Dask event, no polling); the worker runs are
    submitted at that moment with ``AZM_MASTER_HOST``/``AZM_MASTER_PORT``/``AZ_BATCH_MASTER_NODE``.
    When the master ends the workers are stopped (their process groups killed, their logs kept).
    A lost worker is replaced; a lost master (its node gone, or its task run again by Dask
    elsewhere) ends the attempt ``lost``: the driver requeues the whole gang.
    """
    model = ctx.plan.sweep.model
    if not isinstance(model, MasterWorker) or ctx.plan.companion is None:
        raise BatchError("a master/worker job's plan has no worker part; submit it again")
    g = _Gang(ctx, flight, model)
    inbox = ctx.announcements.open(g.gang)
    master_task = replace(
        ctx.plan.task(flight.spec, flight.attempt, ctx.grant(), g.master_session),
        announce=ctx.announcements.topic,
        gang=g.gang,
    )
    with ctx.lock:
        ctx.live_sessions.update((g.master_session, g.worker_session))
    key = f"azm-batch-{g.master_session}-{flight.spec.run_id}-{flight.attempt}"
    master = ctx.client.submit(execute, master_task, key=key, pure=False, retries=0)
    try:
        started = _wait_for_start(ctx, inbox, master)
        lost = ""
        if started is not None:
            for index in range(model.workers):
                _submit_worker(g, str(started["host"]), index)
            lost = _watch(g, inbox, master, str(started["node"]))
        if lost or (started is None and ctx.stopping.is_set() and not master.done()):
            ctx.cancel(g.master_session)
            master.cancel()
        result = outcome(master, master_task) if master.done() and not lost else None
        ctx.cancel(g.worker_session)  # the job ends with the master: its workers stop
        g.finished += end_members(g.workers)
        if result is None:
            why = lost or "cancelled before the master started"
            reason = "lost" if lost else "cancelled"
            result = not_started(master_task, reason, node=str((started or {}).get("node", "")))
            result = replace(result, error=why)
        elif started is not None and g.starts:
            ctx.timings[flight.spec.run_id] = (float(started["time"]), max(g.starts))
        if result.reason == "exit" and not g.starts:
            result = replace(
                result,
                reason="error",
                error=f"the master exited (code {result.exit_code}) before any worker started; "
                "a master must wait for its workers (look at its log: azm batch logs JOB RUN)",
            )
        return as_run_result(result, g.finished)
    finally:
        ctx.announcements.discard(g.gang)
        with ctx.lock:
            ctx.live_sessions.difference_update((g.master_session, g.worker_session))


def _wait_for_start(
    ctx: GangContext, inbox: queue.Queue[dict[str, Any]], master: Any
) -> dict[str, Any] | None:
    """The master's "started" announcement; None when it ended or the job stopped first."""
    while not master.done() and not ctx.stopping.is_set():
        try:
            message = inbox.get(timeout=STEP_S)
        except queue.Empty:
            continue
        if message.get("event") == "started" and not message.get("label"):
            return message
    return None


def _watch(g: _Gang, inbox: queue.Queue[dict[str, Any]], master: Any, master_node: str) -> str:
    """Until the master ends: note the workers' starts, replace lost workers, watch the
    master's node. Returns why the master is lost ("" when it ended by itself)."""
    checked = time.monotonic()
    while not master.done():
        try:
            message = inbox.get(timeout=STEP_S)
            if message.get("event") == "started" and message.get("label"):
                g.starts.append(float(message["time"]))
            elif message.get("event") == "started":  # Dask ran the master again elsewhere
                return f"the master's node {master_node} was lost (its task was run again)"
        except queue.Empty:
            pass
        for future in [f for f in g.workers if f.done()]:
            _worker_ended(g, future)
        if time.monotonic() - checked >= ALIVE_EVERY_S:
            checked = time.monotonic()
            if master_node not in g.ctx.alive_names():
                return f"the master's node {master_node} was lost"
    while True:  # starts announced just before the master ended
        try:
            message = inbox.get_nowait()
        except queue.Empty:
            return ""
        if message.get("event") == "started" and message.get("label"):
            g.starts.append(float(message["time"]))


def _worker_ended(g: _Gang, future: Any) -> None:
    task = g.workers.pop(future)
    result = outcome(future, task)
    g.finished.append(result)
    lost = result.reason in ("lost", "evicted") and not g.ctx.stopping.is_set()
    if lost and g.replaced < MAX_REPLACEMENTS_PER_WORKER * g.model.workers:
        g.replaced += 1
        logger.warning("worker %s of run %s lost; replacing it", task.label, task.run_id)
        _submit_task(g, replace(task, label=f"{task.label}-r{g.replaced}"))


def _submit_worker(g: _Gang, host: str, index: int) -> None:
    companion = g.ctx.plan.companion
    if companion is None:  # checked by run_master_worker
        raise BatchError("a master/worker job's plan has no worker part; submit it again")
    spec = g.flight.spec
    port = g.model.port
    env = {"AZM_MASTER_HOST": host, "AZ_BATCH_MASTER_NODE": host}
    wait = None
    if port is not None:
        env |= {"AZM_MASTER_PORT": str(port), "AZ_BATCH_MASTER_NODE": f"{host}:{port}"}
        if g.model.port_wait_s is not None:
            wait = (host, int(port), float(g.model.port_wait_s))
    wspec = companion.sweep.spec_for(spec.params)
    task = replace(
        companion.task(wspec, g.flight.attempt, g.ctx.grant(), g.worker_session),
        run_id=spec.run_id,
        extra_env=tuple(sorted(env.items())),
        announce=g.ctx.announcements.topic,
        gang=g.gang,
        label=f"worker-{index}",
        wait_for=wait,
    )
    _submit_task(g, task)


def _submit_task(g: _Gang, task: RunTask) -> None:
    key = f"azm-batch-{task.session}-{task.label}-{time.monotonic_ns()}"
    future = g.ctx.client.submit(
        execute, task, key=key, pure=False, retries=0, priority=WORKER_PRIORITY
    )
    g.workers[future] = task
