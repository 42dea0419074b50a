"""The driver: feeds a job's runs to the cluster as Dask tasks, retries, requeues, records."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from azmanagers.batch.flights import (
    Flight,
    Flights,
    Pace,
    attempt_of,
    drain,
    failed,
    final_message,
    final_status,
    gather_finished,
    grant_ttl,
    keys_on_workers,
    on_workers,
    some_done,
    tell_workers,
    worker_gone,
)
from azmanagers.batch.plan import Plan, TakenOverError, new_session
from azmanagers.batch.records import FINAL_STATES, JobRecord, JobStore
from azmanagers.batch.runner import RunResult, execute_many
from azmanagers.batch.sweep import RunSpec
from azmanagers.errors import AzManagersError
from azmanagers.storage.base import Grant, Storage

logger = logging.getLogger("azmanagers.batch")

MAX_REQUEUES = 3
"""A run whose worker is lost is requeued (no retry spent) at most this many times."""
RECORD_EVERY_S = 2.0
"""The job record's counts are written at most this often while runs complete."""
CANCEL_CHECK_S = 5.0
"""How often the driver looks for a cancel request in storage (one small read)."""
RUNNING_RECORD_AFTER_S = RECORD_EVERY_S
"""A first attempt's ``running`` record is written once it has run this long (most short runs
end before and get one record, their final one); an attempt with history (a retry, a requeue,
a resumed run) gets its ``running`` record at once, so that history is never lost."""
Progress = Callable[[Mapping[str, int], int], None]
"""Called as ``progress(counts by state, total)`` when the counts change."""


class Driver:
    """Runs the runs of ``plan`` on ``client``'s cluster and keeps their records in ``store``.

    Runs whose record says ``succeeded`` are skipped (so a re-submission resumes); with
    ``only_failed`` only runs recorded ``failed`` or ``cancelled`` run again. At most
    ``max_in_flight`` tasks are on the cluster at once (``SHORT_RUN_FACTOR`` times more while
    the runs are short) and runs are read lazily from the sweep, so a sweep of 10,000 runs
    never holds every result in memory.
    """

    def __init__(
        self,
        client: Any,
        storage: Storage,
        store: JobStore,
        plan: Plan,
        *,
        max_in_flight: int,
        only_failed: bool = False,
        progress: Progress | None = None,
        grant: Grant | None = None,
        session: str | None = None,
    ) -> None:
        self.client = client
        self.storage = storage
        self.store = store
        self.plan = plan
        self.pace = Pace(max_in_flight)
        """The runs kept on the cluster now, and how many go in one task."""
        self.only_failed = only_failed
        self.progress = progress
        self.session = session or new_session()
        """This submission's id: what a cancel names; a driver that finds another session in
        the job record stops (another driver took the job over)."""
        self.counts: Counter[str] = Counter()
        self.total = len(plan.sweep)
        self.fetches: Counter[str] = Counter()
        """Files fetched into node caches, by node (what ``shared`` saves)."""
        self._claimed = False
        self._taken_over = ""
        self.submitted = 0
        """Runs handed to the cluster by this driver (attempts, retries, requeues and runs of a
        chunk sent again alone)."""
        self._grant: Grant | None = grant
        self._given_grant = grant is not None
        """A driver that holds only a grant (a detached one) passes it on to the workers."""
        self._cancelled = False
        self._record_at = 0.0
        self._cancel_at = time.monotonic()

    def cancel(self) -> None:
        """Stop feeding runs and kill the ones in progress (from any thread)."""
        self._cancelled = True

    @property
    def cancelling(self) -> bool:
        """Whether a cancel (or a takeover) stopped this driver's feeding."""
        return self._cancelled

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> JobRecord:
        known = self.store.statuses()
        todo = self._todo(known)
        flights: Flights = {}
        job = self._job_record("running")
        self.store.write_job(job)
        self._claimed = True
        self._cancelled = self._cancelled or self.store.cancel_requested(self.session)
        exhausted = False
        while True:
            room = self.pace.in_flight - sum(len(group) for group in flights.values())
            while not exhausted and not self._cancelled and room > 0:
                group = []
                for _ in range(min(room, self.pace.chunk)):
                    spec = next(todo, None)
                    if spec is None:
                        exhausted = True
                        break
                    group.append(self._flight(spec, known))
                if group:
                    self._submit(flights, group)
                    room -= len(group)
            if not flights:
                break
            done = some_done(list(flights))
            results = gather_finished(self.client, done)
            for future in done:
                self._finish(flights, future, flights.pop(future), results.get(future))
            self._tick(flights)
        return self._end_job()

    def _end_job(self) -> JobRecord:
        """The job's final record, written; TakenOverError when another driver has it."""
        if self._taken_over:
            raise TakenOverError(
                f"job {self.plan.job} was taken over by {self._taken_over}; this driver's runs "
                "were stopped"
            )
        status = final_status(self._cancelled, self.snapshot(), self.total)
        job = replace(
            self._job_record(status), message=final_message(status, self.snapshot(), self.plan.job)
        )
        self.store.write_job(job)
        return job

    def _todo(self, known: Mapping[str, str]) -> Iterator[RunSpec]:
        for spec in self.plan.sweep.runs():
            state = known.get(spec.run_id)
            if state == "succeeded" or (self.only_failed and state not in ("failed", "cancelled")):
                if state is not None:
                    self.counts[state] += 1
                continue
            yield spec

    def _flight(self, spec: RunSpec, known: Mapping[str, str]) -> Flight:
        """A run's next attempt; a run tried before keeps its history and numbering."""
        record = self.store.read_run(spec.run_id) if spec.run_id in known else None
        if record is None:
            return Flight(spec, 1, 0)
        number = 1 + max([record.attempt, *(a.number for a in record.attempts)])
        flight = Flight(spec, number, record.requeues, list(record.attempts))
        if record.status == "running":  # its driver stopped mid-run: it keeps its retry budget
            flight.failures = sum(failed(a) for a in record.attempts)
        return flight

    def _submit(self, flights: Flights, group: list[Flight]) -> None:
        """Hand ``group``'s runs to the cluster as one task (run one after the other)."""
        grant = self._fresh_grant(len(group))
        tasks = tuple(self.plan.task(f.spec, f.attempt, grant, self.session) for f in group)
        first = group[0]
        key = f"azm-batch-{self.session}-{first.spec.run_id}-{first.attempt}-{first.requeues}"
        if len(group) > 1:
            key += f"-and-{len(group) - 1}"
        future = self.client.submit(execute_many, tasks, key=key, pure=False, retries=0)
        self.submitted += len(group)
        flights[future] = group
        for flight in group:
            if flight.attempts:
                self._write(flight, "running")  # a retry or a resumed run: keep its history now
            else:
                flight.record_at = time.monotonic() + RUNNING_RECORD_AFTER_S
                self._count_running(flight)

    def _finish(
        self,
        flights: Flights,
        future: Any,
        group: list[Flight],
        gathered: tuple[RunResult, ...] | None = None,
    ) -> None:
        from distributed.scheduler import KilledWorker

        try:
            results: tuple[RunResult, ...] = future.result() if gathered is None else gathered
        except Exception as exc:  # a cancelled future, a lost worker, an error outside a run
            lost = isinstance(exc, KilledWorker) or worker_gone(exc)
            for flight in group:
                if self._cancelled:
                    self._write(flight, "cancelled", error="cancelled")
                elif lost:  # queued on that worker, or behind another run of a chunk?
                    why = f"its worker was lost: {exc!r}"
                    self._lost(flights, flight, why, spare=True)
                else:
                    why = f"the runner failed: {exc!r}"
                    flight.note(why, "error")
                    self._write(flight, "failed", error=why)
            return
        for flight, result in zip(group, results, strict=True):
            self._finished(flights, flight, result)

    def _finished(self, flights: Flights, flight: Flight, result: RunResult) -> None:
        """One run's attempt reported: record it, or retry or requeue the run."""
        if result.reason == "deferred":  # a run of a chunk that never started: send it alone
            if self._cancelled:
                self._write(flight, "cancelled", error="cancelled")
            else:
                self._submit(flights, [flight])
            return
        self.fetches[result.node] += result.fetched_files
        if result.exit_code is not None:  # how long commands take, not refusals to start
            self.pace.took(result.ended - result.started)
        if result.succeeded:
            flight.attempts.append(attempt_of(result))
            self._write(flight, "succeeded", result=result)
        elif result.reason in ("evicted", "lost"):  # requeued, or cancelled after a cancel
            why = "got an eviction notice" if result.reason == "evicted" else "was closing"
            why = result.error or f"node {result.node} {why}"  # a gang's says which node
            self._lost(flights, flight, why, result=result, spare=not result.began)
        elif result.reason == "cancelled":
            if result.began:
                flight.attempts.append(attempt_of(result))
            self._write(flight, "cancelled", result=result)
        elif flight.failures < self.plan.sweep.model.retries and not self._cancelled:
            flight.attempts.append(attempt_of(result))
            flight.failures += 1
            flight.attempt += 1
            self._submit(flights, [flight])
        else:
            flight.attempts.append(attempt_of(result))
            self._write(flight, "failed", result=result)

    def _lost(
        self,
        flights: Flights,
        flight: Flight,
        why: str,
        *,
        result: RunResult | None = None,
        spare: bool = False,
    ) -> None:
        """The run's node or worker went away: requeue it (no retry spent), bounded.

        With ``spare`` (a run that may never have started: lost with its worker's queue, or
        turned away by a node that was going) the run may be requeued once more than
        ``MAX_REQUEUES``; every requeue is counted in its record.
        """
        flight.note(why, "lost", result)
        if self._cancelled:
            self._write(flight, "cancelled", error=f"cancelled ({why})")
            return
        flight.spared = flight.spared or spare
        if flight.requeues >= MAX_REQUEUES + flight.spared:
            self._write(flight, "failed", error=f"{why} ({flight.requeues} requeues spent)")
            return
        flight.requeues += 1
        flight.attempt += 1  # a fresh number (and log folder)
        logger.warning("run %s requeued (%s)", flight.spec.run_id, why)
        self._submit(flights, [flight])

    def _tick(self, flights: Flights) -> None:
        now = time.monotonic()
        for group in flights.values():
            for flight in group:
                due = flight.record_at is not None and now >= flight.record_at
                if due and not self._cancelled:
                    self._write(flight, "running")
        if not self._cancelled and now - self._cancel_at >= CANCEL_CHECK_S:
            self._cancel_at = now
            try:
                self._cancelled = self.store.cancel_requested(self.session)
            except AzManagersError as exc:
                logger.warning("could not look for a cancel request: %s", exc)
        if self._cancelled and flights:
            self._kill(flights)
        if now - self._record_at >= RECORD_EVERY_S:
            self._record_at = now
            try:
                self.store.write_job(self._job_record(self._running_status()))
            except TakenOverError as exc:
                logger.error("%s", exc)
                self._cancelled = True  # stop feeding; _taken_over keeps the records alone
                self._kill(flights)
            except AzManagersError as exc:
                logger.warning("could not update the job record: %s", exc)

    def _kill(self, flights: Flights) -> None:
        """Kill the runs in progress, let them store their logs and report (``drain``), and
        record the ones that did not end before the cancel ``cancelled``."""
        if not self._taken_over:
            try:  # waiters see it at once; "cancelled" once every run has its final record
                self.store.write_job(self._job_record("cancelling"))
            except AzManagersError as exc:
                logger.warning("could not record the cancel: %s", exc)
        tell_workers(self.client, self.session)
        placed = keys_on_workers(self.client)
        queued = [f for f in flights if not f.done() and f.key not in placed]
        for future in queued:  # not on a worker yet: it must never start (a new worker
            future.cancel()  # would not know of the cancel)
            for flight in flights.pop(future):
                self._write(flight, "cancelled", error="cancelled")
        drain(
            flights,
            lambda future, group: self._finish(flights, future, group),
            lambda futures: on_workers(self.client, futures),
            lambda: tell_workers(self.client, self.session),
        )
        for future, group in list(flights.items()):
            future.cancel()
            for flight in group:
                self._write(flight, "cancelled", error="cancelled")
            flights.pop(future)

    # -- records ------------------------------------------------------------------------
    def _write(
        self, flight: Flight, status: str, *, result: RunResult | None = None, error: str = ""
    ) -> None:
        flight.record_at = None
        if self._taken_over:
            return  # the runs are the other driver's now: leave their records alone
        spec = flight.spec
        record = flight.record(self.plan.job, status, result, error)
        if status in FINAL_STATES:
            self.counts[status] += 1
            self.counts["running"] -= 1
        else:
            self._count_running(flight, progress=False)
        try:
            self.store.write_run(record)
        except AzManagersError as exc:
            logger.error("could not write the record of run %s: %s", spec.run_id, exc)
        if self.progress is not None:
            self.progress(self.snapshot(), self.total)

    def _count_running(self, flight: Flight, *, progress: bool = True) -> None:
        """Count a run as running from its first submission on (once, whatever its attempts)."""
        if flight.counted:
            return
        flight.counted = True
        self.counts["running"] += 1
        if progress and self.progress is not None:
            self.progress(self.snapshot(), self.total)

    def snapshot(self) -> dict[str, int]:
        counts = {k: v for k, v in self.counts.items() if v > 0}
        counts["pending"] = max(0, self.total - sum(counts.values()))
        return counts

    def _running_status(self) -> str:
        return "cancelling" if self._cancelled and not self._taken_over else "running"

    def _job_record(self, status: str) -> JobRecord:
        current = self.store.read_job()
        if current is None:
            raise AzManagersError(f"the job record of {self.plan.job} disappeared from storage")
        if self._claimed and current.session != self.session:
            self._taken_over = current.driver or current.session
            raise TakenOverError(
                f"job {self.plan.job} is now driven by {self._taken_over}; this driver stopped"
            )
        return replace(
            current.with_counts(self.snapshot(), status),
            driver=current.driver
            if current.driver.startswith("detached:")
            else f"{socket.gethostname()}:{os.getpid()}",
            session=self.session,
        )

    def _fresh_grant(self, runs: int) -> Grant:
        ttl = grant_ttl(self.plan.sweep.model.timeout_s, runs)
        grant = self._grant
        if grant is not None and self._given_grant:
            return grant
        if grant is None or grant.expires_at - time.time() < ttl - 600:
            grant = self._grant = self.storage.grant(self.plan.prefix, ttl_s=ttl, write=True)
        return grant
