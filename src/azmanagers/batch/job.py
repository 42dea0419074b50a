"""A batch job as its records show it: status, runs, wait, logs, download, cancel."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from azmanagers.batch.download import Downloaded, download_runs
from azmanagers.batch.records import RUN_STATES, Attempt, JobRecord, JobStore, RunRecord
from azmanagers.batch.sweep import Sweep
from azmanagers.errors import (
    BatchError,
    BatchJobNotFoundError,
    ConfigError,
    StorageNotFoundError,
    WaitTimeoutError,
)
from azmanagers.storage.base import Storage

if TYPE_CHECKING:
    from azmanagers.batch.driver import Driver

POLL_S = 2.0
"""How often ``wait`` reads the job record when the driver runs elsewhere."""
STALE_DRIVER_S = 120.0
"""A running job whose record has not changed for this long has lost its driver."""
JOB_STATES_FINAL = frozenset({"succeeded", "failed", "cancelled", "stopped", "incomplete"})
"""``stopped``: the job's driver went away before the end (resume it by submitting again);
``incomplete``: its driver ended with runs that never ran and none failed (``retry --failed``
leaves them: ``retry --unfinished`` runs them). ``cancelling`` is not final: the driver is
letting the runs on workers report."""
DRIVEN_STATES = ("running", "cancelling")
"""Job statuses that a live driver keeps writing."""


@dataclass(frozen=True)
class JobStatus:
    """A job's state: its status, counts of runs by state, and where it lives."""

    name: str
    url: str
    status: str
    total: int
    counts: Mapping[str, int]
    created: float
    updated_at: float
    driver: str
    cluster: str
    message: str = ""

    @property
    def done(self) -> bool:
        return self.status in JOB_STATES_FINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "status": self.status,
            "total": self.total,
            "counts": dict(self.counts),
            "created": self.created,
            "updated_at": self.updated_at,
            "driver": self.driver,
            "cluster": self.cluster,
            "message": self.message,
        }


def driver_alive(record: JobRecord) -> bool:
    """Whether a job's driver may still be feeding it: the record says running and changed
    lately, and a driver on this very machine still has its process."""
    if record.status not in DRIVEN_STATES or time.time() - record.updated_at >= STALE_DRIVER_S:
        return False
    host, _, pid = record.driver.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return (psutil.pid_exists(int(pid)) and int(pid) != os.getpid()) or (
            int(pid) == os.getpid() and _driving_here(record)
        )
    return True


DRIVING: dict[str, Driver] = {}
"""The jobs whose driver runs in this process now, by name."""


def _driving_here(record: JobRecord) -> bool:
    return record.name in DRIVING


@dataclass
class _Local:
    """The driver of a job submitted by this process, and what to do when it ends."""

    driver: Driver
    thread: threading.Thread
    error: list[BaseException] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    """Set when the driver ended and let go of its cluster. Waits use it, not the thread:
    a join interrupted by Ctrl-C can leave the thread looking stopped while it runs."""

    @property
    def alive(self) -> bool:
        return not self.finished.is_set()


class Job:
    """A batch job in storage. Made by ``batch.submit`` or ``batch.attach``."""

    def __init__(
        self, name: str, space: Storage, *, local: _Local | None = None, root: str = ""
    ) -> None:
        self.name = name
        self.storage = space
        """The job's space (``storage.spaces.job_space``): its records, inputs and outputs."""
        self.root = root or space.url
        """The storage URL the job was submitted to (what ``attach`` and ``--storage`` take)."""
        self.store = JobStore(space, name)
        self._local = local

    def __repr__(self) -> str:
        return f"<batch.Job {self.name!r} at {self.storage.url}>"

    @property
    def url(self) -> str:
        return self.storage.url

    def record(self) -> JobRecord:
        record = self.store.read_job()
        if record is None:
            raise BatchJobNotFoundError(
                f"no batch job {self.name!r} in {self.root}; `azm batch list --storage "
                f"{self.root}` shows the jobs there."
            )
        return record

    def status(self) -> JobStatus:
        """The job's status and counts of runs by state (one read of the job record)."""
        r = self.record()
        counts = dict(r.counts)
        status, message = r.status, r.message
        if self._local is not None and self._local.alive:
            counts = self._local.driver.snapshot()
        elif status in DRIVEN_STATES and not driver_alive(r):
            status = "stopped"
            counts = dict(Counter(self.store.statuses().values()))  # the records are the truth
            message = (
                f"its driver ({r.driver}) is gone; submit the job again (or `azm batch retry "
                f"{self.name} --unfinished`) to resume it: finished runs are skipped"
            )
        return JobStatus(
            self.name,
            self.url,
            status,
            r.total,
            counts,
            r.created,
            r.updated_at,
            r.driver,
            r.cluster,
            message,
        )

    def runs(self, state: str | None = None) -> list[RunRecord]:
        """The run records (every run that started), optionally only those in ``state``;
        ``pending``: the runs of the job's sweep that have no record yet."""
        if state is not None and state not in RUN_STATES:
            raise ConfigError(f"unknown run state {state!r}; use one of {', '.join(RUN_STATES)}.")
        job = self.record()
        every = list(self.store.runs())
        records = [r for r in every if state is None or r.status == state]
        if state != "pending":
            return records
        known = {r.run_id for r in every}
        return records + [
            RunRecord(self.name, spec.run_id, dict(spec.params), "pending", updated_at=0.0)
            for spec in Sweep.from_dict(job.definition).runs()
            if spec.run_id not in known
        ]

    def run(self, run_id: str) -> RunRecord:
        record = self.store.read_run(run_id)
        if record is None:
            raise BatchJobNotFoundError(
                f"job {self.name!r} has no run {run_id!r}; `azm batch runs {self.name}` lists them."
            )
        return record

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Block until the job ends; its final status (runs may have failed: look at it).

        Raises ``WaitTimeoutError`` after ``timeout`` seconds, and ``BatchError`` when the
        job's driver stopped without ending it (resubmit to resume).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._local is not None:
                self._local.finished.wait(
                    POLL_S
                    if deadline is None
                    else max(0.0, min(POLL_S, deadline - time.monotonic()))
                )
                if self._local.error:
                    raise BatchError(
                        f"the driver of {self.name!r} failed: {self._local.error[0]}"
                    ) from self._local.error[0]
                alive = self._local.alive
            else:
                time.sleep(
                    POLL_S
                    if deadline is None
                    else min(POLL_S, max(0.0, deadline - time.monotonic()))
                )
                alive = True
            status = self.status()
            if progress is not None:
                progress(status)
            if status.done and (self._local is None or not alive):
                return status
            if self._local is None and time.time() - status.updated_at > STALE_DRIVER_S:
                raise BatchError(
                    f"job {self.name!r} is {status.status} but its driver ({status.driver}) has "
                    f"not written for {STALE_DRIVER_S:.0f} s: it stopped. Submit the same job "
                    "again to resume it (finished runs are skipped)."
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {self.name!r} did not end within {timeout} s: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(status.counts.items()))
                )

    def logs(
        self,
        run_id: str,
        stdio: str = "stdout",
        *,
        attempt: int | None = None,
        member: str | None = None,
    ) -> str:
        """A run's stdout or stderr (of its last attempt unless ``attempt``), as text; with
        ``member`` (``worker-0``, ``node-1``) that of a multi-node run's member instead.

        The whole log is read into memory: for big logs use ``log_file``.
        """
        key = self._log_key(run_id, stdio, attempt, member)
        try:
            return self.storage.get_bytes(key).decode(errors="replace")
        except StorageNotFoundError as exc:
            raise BatchJobNotFoundError(
                f"the {stdio} of run {run_id!r} was not kept: {exc}"
            ) from exc

    def log_file(
        self,
        run_id: str,
        dest: str | Path,
        stdio: str = "stdout",
        *,
        attempt: int | None = None,
        member: str | None = None,
    ) -> Path:
        """Fetch a run's (or its ``member``'s) stdout or stderr into the file ``dest``
        (verified); return its path."""
        key = self._log_key(run_id, stdio, attempt, member)
        try:
            self.storage.get_file(key, Path(dest))
        except StorageNotFoundError as exc:
            raise BatchJobNotFoundError(
                f"the {stdio} of run {run_id!r} was not kept: {exc}"
            ) from exc
        return Path(dest)

    def _log_key(self, run_id: str, stdio: str, attempt: int | None, member: str | None) -> str:
        if stdio not in ("stdout", "stderr"):
            raise ConfigError(f"stdio must be 'stdout' or 'stderr', not {stdio!r}.")
        record = self.run(run_id)
        if member is not None:
            return _member_key(record, stdio, member)
        attempts = [a for a in record.attempts if attempt is None or a.number == attempt]
        keys = [a.stdout_key if stdio == "stdout" else a.stderr_key for a in attempts]
        keys = [k for k in keys if k]
        if not keys:
            raise BatchJobNotFoundError(
                f"run {run_id!r} of {self.name!r} has no {stdio} yet"
                + (f" for attempt {attempt}" if attempt else "")
                + "."
            )
        return keys[-1]

    def download(
        self, dest: str | Path, *, run: str | None = None, overwrite: bool = False
    ) -> list[Path]:
        """Fetch the outputs of every run (or of one) into ``dest/<run id>/``, and the last
        attempt's logs into ``dest/<run id>/_logs/``; return every file's path.

        Files already there with the same content are kept (a repeated download fetches only
        what is new). A file there with other content is an error naming it, unless
        ``overwrite``: nothing of yours is replaced silently. Every path is checked before the
        first fetch (see ``batch.download``).
        """
        return self.download_report(dest, run=run, overwrite=overwrite).paths

    def download_report(
        self, dest: str | Path, *, run: str | None = None, overwrite: bool = False
    ) -> Downloaded:
        """``download``, saying also how many files were fetched (the rest were there)."""
        records = [self.run(run)] if run is not None else self.runs()
        return download_runs(self.storage, records, Path(dest), overwrite=overwrite)

    def cancel(self) -> None:
        """Ask the job to stop: its driver kills every run's process group; status cancelled."""
        record = self.record()
        if record.status in JOB_STATES_FINAL:
            return
        self.store.request_cancel(record.session)
        if self._local is not None:
            self._local.driver.cancel()

    def retry(self, *, failed: bool = True, **submit_options: Any) -> Job:
        """Run again the runs that failed (or, with ``failed=False``, every unfinished one)."""
        from azmanagers.batch.api import resubmit

        return resubmit(self, only_failed=failed, **submit_options)


def member_label(attempt: Attempt) -> str:
    """A multi-node run's member's label (``worker-0``, ``node-1``), from its logs' keys."""
    key = attempt.stdout_key or attempt.stderr_key
    return key.split("/members/", 1)[1].split("/", 1)[0] if "/members/" in key else "?"


def _member_key(record: RunRecord, stdio: str, member: str) -> str:
    for attempt in record.members:
        key = attempt.stdout_key if stdio == "stdout" else attempt.stderr_key
        if member_label(attempt) == member and key:
            return key
    known = ", ".join(member_label(a) for a in record.members) or "none (not a multi-node run)"
    raise BatchJobNotFoundError(
        f"run {record.run_id!r} has no {stdio} of a member {member!r}; its members: {known}."
    )
