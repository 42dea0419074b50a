"""What the driver keeps per run in flight, how many it keeps, and how it waits for them."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from azmanagers.batch.records import FINAL_STATES, Attempt, RunRecord
from azmanagers.batch.runner import RunResult
from azmanagers.batch.sweep import RunSpec

WAIT_STEP_S = 0.5
"""The longest the driver waits for a task to end before it looks at its clocks again."""
MIN_IN_FLIGHT = 8
SHORT_RUN_S = 0.2
"""Attempts that take less than this (on average, over the last ``RECENT_RUNS``) are short:
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
    record_at: float | None = None
    """When (monotonic) to write this attempt's ``running`` record; None: written, or due
    to no one."""

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
        short = (
            len(self._recent) >= RECENT_RUNS // 2
            and sum(self._recent) / len(self._recent) < SHORT_RUN_S
        )
        self.in_flight = self.base_in_flight * (SHORT_RUN_FACTOR if short else 1)
        self.chunk = SHORT_RUN_CHUNK if short else 1


def grant_ttl(timeout_s: float | None) -> float:
    """How long a worker's storage grant lasts for runs with this timeout."""
    ttl = DEFAULT_GRANT_TTL_S if timeout_s is None else timeout_s * 2 + GRANT_SLACK_S
    return min(ttl, MAX_GRANT_TTL_S)


def ran(future: Any) -> int:
    """How many of a finished task's runs had started their command (killed runs that
    reported)."""
    if future.status != "finished":
        return 0
    results: tuple[RunResult, ...] = future.result()
    return sum(result.exit_code is not None for result in results)


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
