"""The driver of multi-node jobs: each run is a gang (MPI nodes, or a master and its workers)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from typing import Any

from azmanagers.batch.driver import Driver
from azmanagers.batch.flights import CANCEL_DRAIN_S, REMIND_S, Flight, Flights
from azmanagers.batch.gangbase import Announcements, GangContext
from azmanagers.batch.records import JobRecord
from azmanagers.batch.runner import RunResult
from azmanagers.storage.base import Grant

MAX_GANGS = 16
"""Gangs of one job in flight at once (each waits for its own nodes)."""
GANG_WAIT_STEP_S = 0.5


class GangDriver(Driver):
    """A ``Driver`` whose runs are gangs, each orchestrated from a thread of this process: the
    records, retries, requeues, resumption and cancel are the ``Driver``'s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=MAX_GANGS, thread_name_prefix=f"azm-gang-{self.plan.job}"
        )
        self.pace.in_flight = self.pace.base_in_flight = MAX_GANGS
        self._stopping = threading.Event()
        self._ctx: GangContext | None = None

    @property
    def timings(self) -> dict[str, tuple[float, float]]:
        """Per master/worker run: when its master's and its last worker's commands started."""
        return {} if self._ctx is None else dict(self._ctx.timings)

    def run(self) -> JobRecord:
        topic = f"azm-batch-{self.session}"
        announcements = Announcements(self.client, topic)
        self._ctx = GangContext(
            client=self.client,
            plan=self.plan,
            session=self.session,
            grant=self._gang_grant,
            announcements=announcements,
            stopping=self._stopping,
        )
        try:
            return self._loop()
        finally:
            self._stopping.set()
            announcements.close()
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> JobRecord:
        known = self.store.statuses()
        todo = self._todo(known)
        flights: Flights = {}
        self.store.write_job(self._job_record("running"))
        self._claimed = True
        self._cancelled = self._cancelled or self.store.cancel_requested(self.session)
        exhausted = False
        while True:
            room = self._room() if not exhausted and not self._cancelled else 0
            while not exhausted and not self._cancelled and len(flights) < room:
                spec = next(todo, None)
                if spec is None:
                    exhausted = True
                    break
                self._submit(flights, [self._flight(spec, known)])
            if not flights:
                break
            done, _ = concurrent.futures.wait(
                list(flights), timeout=GANG_WAIT_STEP_S, return_when="FIRST_COMPLETED"
            )
            for future in done:
                group = flights.pop(future)
                self._finish(flights, future, group, (future.result(),))
            self._tick(flights)
        return self._end_job()

    def _room(self) -> int:
        """How many gangs may be in flight: as many as the cluster's worker threads hold
        whole (more would take slots from each other: a master whose workers cannot start,
        an MPI run waiting for nodes), at least one, at most ``MAX_GANGS``."""
        from azmanagers.batch.multinode import MasterWorker

        ctx = self._ctx
        model = self.plan.sweep.model
        need = model.workers + 1 if isinstance(model, MasterWorker) else getattr(model, "nodes", 1)
        workers = {} if ctx is None else ctx.workers()
        slots = sum(int(info.get("nthreads", 1)) for info in workers.values())
        return max(1, min(MAX_GANGS, slots // max(1, need)))

    def _submit(self, flights: Flights, group: list[Flight]) -> None:
        from azmanagers.batch.mastergang import run_master_worker
        from azmanagers.batch.mpigang import run_mpi
        from azmanagers.batch.multinode import MasterWorker

        assert self._ctx is not None  # run() made it
        gang = run_master_worker if isinstance(self.plan.sweep.model, MasterWorker) else run_mpi
        for flight in group:
            future = self._pool.submit(self._guarded, gang, flight)
            self.submitted += 1
            flights[future] = [flight]
            if flight.attempts:
                self._write(flight, "running")
            else:
                flight.record_at = time.monotonic()
                self._count_running(flight)

    def _guarded(self, gang: Any, flight: Flight) -> RunResult:
        """A gang's result; a bug of ours fails that run with the error, not the driver."""
        from azmanagers.batch.runner import not_started

        ctx = self._ctx
        assert ctx is not None
        try:
            result: RunResult = gang(ctx, flight)
            return result
        except Exception as exc:
            task = self.plan.task(flight.spec, flight.attempt, self._gang_grant(), self.session)
            return not_started(task, "error", node="-", error=f"the gang failed: {exc!r}")

    def _kill(self, flights: Flights) -> None:
        """Stop every gang: their members are killed, store their logs and report; runs that
        did not end before the cancel are recorded ``cancelled``."""
        from azmanagers.batch.flights import tell_workers

        self._stopping.set()
        if not self._taken_over:
            # the records of the runs still say what happened if this cannot be written
            with contextlib.suppress(Exception):
                self.store.write_job(self._job_record("cancelling"))
        ctx = self._ctx
        sessions = [self.session]
        if ctx is not None:
            with ctx.lock:
                sessions += sorted(ctx.live_sessions)
        for session in sessions:
            tell_workers(self.client, session)
        deadline = time.monotonic() + CANCEL_DRAIN_S
        reminded = time.monotonic()
        while flights and time.monotonic() < deadline:
            if time.monotonic() - reminded >= REMIND_S:  # a run that started since hears it
                reminded = time.monotonic()
                for session in sessions:
                    tell_workers(self.client, session)
            done, _ = concurrent.futures.wait(
                list(flights), timeout=GANG_WAIT_STEP_S, return_when="FIRST_COMPLETED"
            )
            for future in done:
                group = flights.pop(future)
                self._finish(flights, future, group, (future.result(),))
        for future, group in list(flights.items()):
            future.cancel()
            for flight in group:
                self._write(flight, "cancelled", error="cancelled")
            flights.pop(future)

    def _gang_grant(self) -> Grant:
        return self._fresh_grant(1)
