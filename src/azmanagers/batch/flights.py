"""What the driver keeps per run in flight, how many it keeps, and how it waits for them."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azmanagers.batch.processes import cancel_session
from azmanagers.batch.records import FINAL_STATES, Attempt, RunRecord
from azmanagers.batch.runner import RunResult
from azmanagers.batch.sweep import RunSpec

logger = logging.getLogger("azmanagers.batch")

WAIT_STEP_S = 0.5
"""The longest the driver waits for a task to end before it looks at its clocks again."""
MIN_IN_FLIGHT = 8
SHORT_RUN_S = 0.2
"""Attempts that take less than this (each of the last ``RECENT_RUNS``) are short:
the driver then keeps ``SHORT_RUN_FACTOR`` times more runs in flight, so workers never wait
for it and results come back in batches."""
SHORT_RUN_FACTOR = 4
SHORT_RUN_CHUNK = 4
"""While runs are short, this many go to a worker in one Dask task (run one after the other):
the scheduler's, the comms' and the driver's cost per task is shared by them."""
RECENT_RUNS = 16
GRANT_SLACK_S = 3600.0
"""A grant outlives the longest a run may take by this much."""
DEFAULT_GRANT_TTL_S = 24 * 3600.0
"""A grant's lifetime for runs without a timeout."""
CANCEL_DRAIN_S = 60.0
"""After a cancel: how long the runs on workers get to end (killed ones store their logs;
one that was uploading its outputs finishes that) and report."""
REMIND_S = 1.0
"""How often the workers are told of a cancel again while its runs report."""
MAX_GRANT_TTL_S = 7 * 24 * 3600.0
"""The longest grant minted (a user-delegation key's limit); longer runs get a fresh one
when they are requeued or retried."""


@dataclass
class Flight:
    """One run on its way: its current attempt and the history it carries."""

    spec: RunSpec
    attempt: int
    requeues: int
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    failures: int = 0
    """Attempts that failed (non-zero exit, timeout, error): what ``retries`` bounds."""
    counted: bool = False
    spared: bool = False
    """Whether this run was lost where it may never have started (its worker's queue, a node
    turning it away): it may then be requeued once more than ``MAX_REQUEUES``."""
    record_at: float | None = None
    """When (monotonic) to write this attempt's ``running`` record; None: written, or due
    to no one."""

    def note(self, why: str, reason: str = "lost", result: RunResult | None = None) -> None:
        """Add this attempt to the history: one that never reported (``result`` None), or
        ``result``'s under another ``reason`` and with ``why``."""
        if result is None:
            attempt = Attempt(self.attempt, "", self.started, time.time(), None, reason, error=why)
        else:
            attempt = attempt_of(result, reason=reason, error=why)
        self.attempts.append(attempt)

    def record(self, job: str, status: str, result: RunResult | None, error: str = "") -> RunRecord:
        """The run's record as of now, with ``status`` (and the last result, if any)."""
        return RunRecord(
            job=job,
            run_id=self.spec.run_id,
            params=dict(self.spec.params),
            status=status,
            attempts=tuple(self.attempts),
            requeues=self.requeues,
            exit_code=None if result is None else result.exit_code,
            node="" if result is None else result.node,
            started=self.started,
            ended=time.time() if status in FINAL_STATES else 0.0,
            outputs=() if result is None else result.outputs,
            error=error or ("" if result is None else result.error),
            attempt=self.attempt,
            members=() if result is None else result.members,
        )


def final_status(cancelled: bool, counts: Mapping[str, int], total: int) -> str:
    """A job's status when its driver ends, from the counts of its runs by state."""
    if cancelled:
        return "cancelled"
    if counts.get("succeeded", 0) == total:
        return "succeeded"
    return "failed" if counts.get("failed", 0) or counts.get("cancelled", 0) else "incomplete"


def final_message(status: str, counts: Mapping[str, int], job: str) -> str:
    """What the final status does not say: runs that never ran (``retry`` left them)."""
    never = counts.get("pending", 0)
    if status == "cancelled" or not never:
        return ""
    return f"{never} run(s) never ran; `azm batch retry {job} --unfinished` runs them"


def attempt_of(result: RunResult, *, reason: str = "", error: str = "") -> Attempt:
    """The attempt ``result`` reports (its reason and error unless others are given)."""
    return Attempt(
        result.attempt,
        result.node,
        result.started,
        result.ended,
        result.exit_code,
        reason or result.reason,
        result.stdout_key,
        result.stderr_key,
        error or result.error,
    )


def failed(attempt: Attempt) -> bool:
    """Whether an attempt spent one of the run's retries (not a requeue, not a cancel)."""
    return attempt.reason in ("timeout", "error") or (
        attempt.reason == "exit" and attempt.exit_code != 0
    )


Flights = dict[Any, list[Flight]]
"""Each Dask future in flight with the runs it carries (one, or a chunk of short ones)."""


class Pace:
    """How many runs the driver keeps in flight and how many go in one task: more, in
    chunks, while the recent attempts are short."""

    def __init__(self, base_in_flight: int) -> None:
        self.base_in_flight = max(MIN_IN_FLIGHT, base_in_flight)
        self.in_flight = self.base_in_flight
        self.chunk = 1
        self._recent: deque[float] = deque(maxlen=RECENT_RUNS)

    def took(self, seconds: float) -> None:
        """Note an attempt's duration."""
        self._recent.append(seconds)
        short = len(self._recent) >= RECENT_RUNS // 2 and max(self._recent) < SHORT_RUN_S
        self.in_flight = self.base_in_flight * (SHORT_RUN_FACTOR if short else 1)
        self.chunk = SHORT_RUN_CHUNK if short else 1


def grant_ttl(timeout_s: float | None, runs: int = 1) -> float:
    """How long a worker's storage grant lasts for a task of ``runs`` runs (one after the
    other) with this timeout each."""
    ttl = DEFAULT_GRANT_TTL_S if timeout_s is None else timeout_s * (runs + 1) + GRANT_SLACK_S
    return min(ttl, MAX_GRANT_TTL_S)


def gather_finished(client: Any, done: list[Any]) -> dict[Any, tuple[RunResult, ...]]:
    """The results of the finished futures among ``done``, fetched in one call.

    Futures left out (erred, cancelled, or all of them when the call fails) are to be asked
    one by one, which sorts out what happened to them.
    """
    finished = [f for f in done if f.status == "finished"]
    if len(finished) < 2:
        return {}
    try:
        values = client.gather(finished)
    except Exception:  # a worker lost meanwhile: each future is asked on its own
        return {}
    return dict(zip(finished, values, strict=True))


def drain(
    flights: Flights,
    finish: Callable[[Any, list[Flight]], None],
    on_workers: Callable[[list[Any]], bool],
    remind: Callable[[], None],
) -> None:
    """After a cancel: let the tasks in flight report, for at most ``CANCEL_DRAIN_S``.

    Every task that ends is ``finish``ed, so its runs that ended before the cancel keep their
    outcome and killed ones keep their logs. The workers are ``remind``ed of the cancel every
    ``REMIND_S`` (a task that Dask moves to a worker that joined after the cancel is killed
    there as soon as it starts). The wait stops early once none of the tasks left is
    ``on_workers``.
    """
    deadline = time.monotonic() + CANCEL_DRAIN_S
    reminded = time.monotonic()
    while flights and time.monotonic() < deadline:
        done = some_done(list(flights))
        if not done and not on_workers(list(flights)):
            return
        for future in done:
            finish(future, flights.pop(future))
        if flights and time.monotonic() - reminded >= REMIND_S:
            reminded = time.monotonic()
            remind()


def on_workers(client: Any, futures: list[Any]) -> bool:
    """Whether any of ``futures`` is on a worker (running, queued there, or done there)."""
    keys = keys_on_workers(client)
    return any(f.key in keys for f in futures)


def keys_on_workers(client: Any) -> set[str]:
    """The keys of the tasks on workers: running, in a worker's queue, or done there (asked
    in that order, so a task that ends meanwhile is not missed); none when the scheduler
    cannot be asked (gone: nothing to wait for)."""
    try:
        processing = client.processing()
        finished = client.has_what()
    except Exception:
        return set()
    return {key for keys in (*processing.values(), *finished.values()) for key in keys}


def tell_workers(client: Any, session: str) -> None:
    """Tell every worker (also one that joined since) to kill the runs of ``session``."""
    try:
        client.run(cancel_session, session)
    except Exception as exc:  # a worker that went away cannot be asked
        logger.warning("could not reach every worker to cancel: %r", exc)


def some_done(futures: list[Any]) -> list[Any]:
    """The futures that ended (finished, erred or cancelled) within ``WAIT_STEP_S``."""
    from distributed import wait

    try:
        done, _ = wait(futures, timeout=WAIT_STEP_S, return_when="FIRST_COMPLETED")
    except TimeoutError:
        return []
    except Exception:  # some were cancelled (FuturesCancelledError): they ended too
        return [f for f in futures if f.done() or f.cancelled()]
    return list(done)


def worker_gone(exc: BaseException) -> bool:
    """Whether a task's error says its worker went away (not that the runner failed)."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & {"CommClosedError", "StreamClosedError", "KilledWorker"})
