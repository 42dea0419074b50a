"""An MPI run: N whole workers held at once, coordination on each, mpiexec on the primary."""

from __future__ import annotations

import logging
import queue
import secrets
import time
from dataclasses import replace
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
from azmanagers.batch.mpinode import MpiMember, deliver_hosts, end_gang
from azmanagers.batch.multinode import MpiModel
from azmanagers.batch.runner import RunResult, RunTask, execute, not_started
from azmanagers.errors import BatchError

logger = logging.getLogger("azmanagers.batch")

RESERVE_STEP_S = 0.5
"""How often a gang waiting for free workers looks again."""


class NodesUnavailable(BatchError):
    """Not enough workers for a gang within its wait (the message says how many were free)."""


def run_mpi(ctx: GangContext, flight: Flight) -> RunResult:
    """Run one MPI run on ``model.nodes`` workers and return the primary's result, with the
    other nodes' outcomes as its members. A node lost mid-run comes back ``lost`` (the driver
    requeues the gang, no retry spent); not enough free workers within ``node_wait`` is an
    ``error`` that says how many there were."""
    model = ctx.plan.sweep.model
    if not isinstance(model, MpiModel):
        raise BatchError(f"an MPI gang needs an MpiModel, not a {type(model).__name__}")
    spec = flight.spec
    base = ctx.plan.task(spec, flight.attempt, ctx.grant(), ctx.session)
    try:
        addresses = reserve(ctx, model.nodes, model.node_wait_s)
    except NodesUnavailable as exc:
        reason = "cancelled" if ctx.stopping.is_set() else "error"
        return not_started(base, reason, node="-", error=str(exc))
    tag = secrets.token_hex(3)
    gang = f"{ctx.session}-{spec.run_id}-{flight.attempt}-{tag}"
    msession = f"{ctx.session}.{tag}"  # the gang's own: a cancel of it reaches no other gang
    inbox = ctx.announcements.open(gang)
    token = secrets.token_hex(16)
    members: dict[Any, RunTask] = {}
    with ctx.lock:
        ctx.live_sessions.add(msession)
    try:
        for index, address in enumerate(addresses):
            member = MpiMember(
                gang=gang,
                index=index,
                size=len(addresses),
                token=token,
                topic=ctx.announcements.topic,
                ranks_per_node=model.ranks_per_node,
                coordination=model.coordination_for(spec),
                library=model.library,
                oversubscribe=model.oversubscribe,
                wrap=model.wraps(base.command),
            )
            task = replace(
                base,
                session=msession,
                member=member,
                gang=gang,
                label="" if index == 0 else f"node-{index}",
                overlay=base.overlay if index == 0 else None,
                outputs=base.outputs if index == 0 else (),
            )
            key = f"azm-batch-{msession}-{index}"
            future = ctx.client.submit(
                execute, task, key=key, workers=[address], allow_other_workers=False, pure=False
            )
            members[future] = task
        return _drive(ctx, inbox, members, addresses, msession, gang)
    finally:
        ctx.announcements.discard(gang)
        with ctx.lock:
            ctx.live_sessions.discard(msession)
            ctx.held.difference_update(addresses)


def _drive(
    ctx: GangContext,
    inbox: queue.Queue[dict[str, Any]],
    members: dict[Any, RunTask],
    addresses: list[str],
    msession: str,
    gang: str,
) -> RunResult:
    primary_future = next(iter(members))
    lost, failed = "", None
    try:
        lost, failed = _follow(ctx, inbox, members, addresses, gang)
    finally:  # whatever happened: every member stops, keeps its logs and reports
        alive = ctx.alive()
        live = [a for a in addresses if a in alive]  # a dead worker cannot be told (30 s)
        if not primary_future.done() or lost or failed is not None:
            ctx.cancel(msession, live)  # a command still running anywhere (coordination too)
        ctx.tell(end_gang, gang, workers=live)
    results = _end(members, addresses, alive, ctx.names)
    primary, others = results[0], results[1:]
    stopping = ctx.stopping.is_set()
    gone = [r.node or "?" for r in others if r.reason in ("lost", "evicted")]
    if not lost and gone:
        lost = gone[0]  # mpiexec ended because a node went: not the run's failure
    if lost and not stopping:
        return as_run_result(
            primary, others, reason="lost", exit_code=None, error=f"node {lost} was lost mid-run"
        )
    if failed is not None and not stopping:
        node, code = failed.get("node", "?"), failed.get("exit_code")
        if failed.get("reason") == "timeout":
            why, reason = "the coordination command ran past the run's timeout", "timeout"
        elif code is None:
            why, reason = f"its member ended early ({failed.get('reason')})", "error"
        else:
            why, reason = f"the coordination command failed (exit {code})", "exit"
        return as_run_result(
            primary,
            others,
            reason=reason,
            exit_code=code if code is not None else primary.exit_code,
            error=f"node {node}: {why}; see its log (azm batch logs JOB RUN --member ...)",
        )
    return as_run_result(primary, others)


def _follow(
    ctx: GangContext,
    inbox: queue.Queue[dict[str, Any]],
    members: dict[Any, RunTask],
    addresses: list[str],
    gang: str,
) -> tuple[str, dict[str, Any] | None]:
    """Until the primary ends: hand it the hosts once every member is ready; watch for a
    failed coordination and lost nodes. Returns (the lost node or "", the failure or None)."""
    primary_future = next(iter(members))
    names = ctx.names
    ready: dict[int, dict[str, Any]] = {}
    delivered = False
    checked = time.monotonic()
    while not primary_future.done() and not ctx.stopping.is_set():
        try:
            message = inbox.get(timeout=STEP_S)
            if "index" in message and "ready" in message:
                ready[int(message["index"])] = message
                if not message["ready"]:
                    return "", message
        except queue.Empty:
            pass
        early = [f for f in members if f is not primary_future and f.done()]
        if early:  # a secondary ended before the primary: its node is gone, or it failed
            address = addresses[list(members).index(early[0])]
            result = outcome(early[0], members[early[0]], node=names.get(address, address))
            if result.reason in ("lost", "evicted"):
                return result.node, None
            return "", {"node": result.node, "exit_code": result.exit_code, "reason": result.reason}
        if not delivered and len(ready) == len(addresses):
            hosts = [str(ready[i]["host"]) for i in range(len(addresses))]
            ports = {str(ready[i]["host"]): int(ready[i]["port"]) for i in range(1, len(addresses))}
            ctx.tell(deliver_hosts, gang, hosts, ports, workers=addresses[:1])
            delivered = True
        if time.monotonic() - checked >= ALIVE_EVERY_S:
            checked = time.monotonic()
            alive = ctx.alive()
            gone = [a for a in addresses if a not in alive]
            if alive and gone:  # ({} is a scheduler that could not be asked: look again)
                return names.get(gone[0], gone[0]), None
    return "", None


def _end(
    members: dict[Any, RunTask], addresses: list[str], alive: set[str], names: dict[str, str]
) -> list[RunResult]:
    """Every member's result, in order; a member whose worker is gone is not waited for (a
    task pinned to a dead worker never ends)."""
    waiting = {f: t for (f, t), a in zip(members.items(), addresses, strict=True) if a in alive}
    ended = dict(zip(waiting, end_members(waiting), strict=True))
    results = []
    for (future, task), address in zip(members.items(), addresses, strict=True):
        if future in ended:
            results.append(ended[future])
        else:
            future.cancel()
            results.append(
                not_started(
                    task, "lost", node=names.get(address, address), error="its worker was lost"
                )
            )
    return results


def reserve(ctx: GangContext, nodes: int, wait_s: float) -> list[str]:
    """Hold ``nodes`` idle workers at once (none held while waiting for more), waiting at most
    ``wait_s`` seconds; NodesUnavailable then, saying how many there were and how many free.

    The driver keeps no more gangs in flight than the cluster has room for, so a gang that
    gets here normally finds its nodes free; a wait means the cluster is short, or busy with
    other work.
    """
    deadline = time.monotonic() + wait_s
    while True:
        if ctx.stopping.is_set():
            raise NodesUnavailable("cancelled while waiting for the run's nodes")
        workers = ctx.workers()
        try:
            busy = {a for a, keys in ctx.client.processing().items() if keys}
        except Exception:  # a scheduler hiccup: look again
            busy = set(workers)
        with ctx.lock:
            free = sorted(a for a in workers if a not in busy and a not in ctx.held)
            if len(free) >= nodes:
                chosen = free[:nodes]
                ctx.held.update(chosen)
                return chosen
        if time.monotonic() >= deadline:
            raise NodesUnavailable(
                f"this MPI run needs {nodes} whole nodes; the cluster had {len(workers)} "
                f"worker(s), {len(free)} of them free, for {wait_s:g} s (node_wait). Give the "
                f"job's cluster {nodes} or more workers, or lower nodes"
            )
        time.sleep(RESERVE_STEP_S)
