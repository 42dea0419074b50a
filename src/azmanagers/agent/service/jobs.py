"""The detached service's jobs: start each in its own process, watch it, keep its record."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from azmanagers.agent.service import run as jobrun
from azmanagers.agent.service.gate import FIRST_REQUEST_S, MAX_CONNECTIONS
from azmanagers.agent.service.procs import JOB_MARKER, Running, alive, create_time, kill_job
from azmanagers.agent.service.store import FINISHED, JobRecord, JobStore
from azmanagers.detached.wire import JobError, JobRequest, JobResult

logger = logging.getLogger("azmanagers.detached")

MAX_READ_BYTES = 4 * 1024 * 1024
"""The most of a job's output one read returns."""
SELF_DELETE_GRACE_S = float(os.environ.get("AZMANAGERS_SELF_DELETE_GRACE_S", "30"))
"""After a persist=False job ends, the VM waits this long (for its result to be read)."""
JOB_ID = re.compile(r"[0-9a-f]{16}")
_STAGING_PREFIX = ".new-"
"""A job's directory while it is being made (renamed to its id once its record exists)."""
_PASSED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "PYTHONPATH",
    "AZMANAGERS_IMDS_ENDPOINT",
    "AZMANAGERS_INSTANCE_DIR",  # a process-VM's jobs are stopped with it
)
"""The service's variables a job sees (no others: the job gets a clean environment)."""


class BadRequest(Exception):
    """A request the service refuses: a 4xx status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServiceConfig:
    """What the service needs: from the boot payload, or a test."""

    name: str
    state_dir: Path
    token_sha256: str = field(repr=False)
    cert_file: Path
    key_file: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_request_bytes: int = 64 * 1024 * 1024
    """The largest request body (a job with its arguments and variable bundle)."""
    self_delete: str = ""
    """How this VM deletes itself after a ``persist=False`` job: ``local`` or '' (it cannot)."""
    body_timeout_s: float = 60.0
    """The longest a request's body may take to arrive (64 MiB at about 1 MiB/s)."""
    max_connections: int = MAX_CONNECTIONS
    """The most connections open at once (see ``gate.ConnectionGate``)."""
    first_request_timeout_s: float = FIRST_REQUEST_S
    """How long a new connection may take to send an authenticated request."""


class JobService:
    """Starts jobs, watches their processes, and keeps their records.

    Each job runs ``azmanagers.agent.service.run`` in a directory of its own with a clean
    environment, in a session of its own (it survives a restart of the service). A kill stops
    every process carrying the job's marker variable (``procs``). Records live in SQLite
    (``store``): a restarted service adopts the jobs still running and marks those that died
    meanwhile as failed, with the reason. A job's record and directory are made together or
    not at all.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.jobs_dir = config.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(config.state_dir / "jobs.db")
        self.running: dict[str, Running] = {}
        self.on_exit: Callable[[], None] | None = None
        """Called (from a watcher thread) when a job's process exits: wakes the service."""
        self.started_at = time.time()
        self._recover()

    # -- starting ----------------------------------------------------------------------
    def submit(self, request: JobRequest) -> JobRecord:
        """Write a checked run request's files, record it, start its process; return its
        record. The record and the directory are made together or not at all."""
        decoded: dict[str, bytes] = {}
        for key, value in (("call", request.call), ("bundle", request.bundle)):
            if value is None:
                continue
            try:
                decoded[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(400, f"'{key}' is not valid base64") from None
        job_id = secrets.token_hex(8)
        staging = self.jobs_dir / f"{_STAGING_PREFIX}{job_id}"
        record = JobRecord(
            id=job_id,
            name=request.name,
            kind="code" if request.code is not None else "call",
            status="queued",
            created_at=time.time(),
            persist=request.persist,
        )
        try:
            (staging / "work").mkdir(parents=True, mode=0o700)
            if request.code is not None:
                (staging / jobrun.CODE_FILE).write_text(request.code, encoding="utf-8")
            else:
                (staging / jobrun.CALL_FILE).write_bytes(decoded["call"])
            if "bundle" in decoded:
                (staging / "bundle.pkl").write_bytes(decoded["bundle"])
            self.store.add(record)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            os.replace(staging, self.jobs_dir / job_id)
        except BaseException:
            self.store.remove(job_id)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self._start(record, request.env)

    def _start(self, record: JobRecord, env: dict[str, str]) -> JobRecord:
        job_dir = self.jobs_dir / record.id
        job_env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        job_env.update(env)
        job_env.update(
            PYTHONUNBUFFERED="1",
            **{JOB_MARKER: record.id},
            AZMANAGERS_VM_NAME=self.config.name,
        )
        if (job_dir / "bundle.pkl").exists():
            job_env["AZMANAGERS_VARIABLE_BUNDLE"] = str(job_dir / "bundle.pkl")
        try:
            with (
                open(job_dir / "stdout", "wb") as out,
                open(job_dir / "stderr", "wb") as err,
            ):
                process = subprocess.Popen(
                    [sys.executable, "-m", "azmanagers.agent.service.run", str(job_dir)],
                    cwd=job_dir / "work",
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=job_env,
                    start_new_session=True,  # survives a restart of the service
                )
        except (OSError, ValueError) as exc:
            return self.store.finish(
                record.id, "failed", error_type="OSError", error_message=f"cannot start: {exc}"
            )
        started = create_time(process.pid) or time.time()
        self.running[record.id] = Running(process, process.pid, started)
        threading.Thread(
            target=self._watch, args=(process,), name=f"azm-job-{record.id}", daemon=True
        ).start()
        logger.info("job %s started (pid %d)", record.id, process.pid)
        return self.store.update(
            record.id,
            status="running",
            started_at=time.time(),
            pid=process.pid,
            pid_started_at=started,
        )

    # -- watching ----------------------------------------------------------------------
    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        if self.on_exit is not None:
            self.on_exit()

    def poll(self) -> bool:
        """Finish the records of jobs whose process has ended; True if any did."""
        changed = False
        for job_id, run in list(self.running.items()):
            if run.process is not None:
                code = run.process.poll()
                if code is None:
                    continue
            elif alive(run.pid, run.started_at):
                continue
            else:
                code = None
            del self.running[job_id]
            self._after(self._finish_from_outcome(job_id, code))
            changed = True
        return changed

    def _finish_from_outcome(self, job_id: str, exit_code: int | None) -> JobRecord:
        outcome_file = self.jobs_dir / job_id / jobrun.OUTCOME_FILE
        try:
            outcome = json.loads(outcome_file.read_text())
        except (OSError, ValueError):
            outcome = None
        if outcome is not None and outcome.get("status") == "succeeded":
            return self.store.finish(job_id, "succeeded", exit_code=exit_code)
        if outcome is not None:
            return self.store.finish(
                job_id,
                "failed",
                exit_code=exit_code,
                error_type=str(outcome.get("error_type", "")),
                error_message=str(outcome.get("error_message", "")),
            )
        reason = (
            f"its process exited with status {exit_code} before it finished"
            if exit_code is not None
            else "its process ended without recording an outcome"
        )
        return self.store.finish(
            job_id, "failed", exit_code=exit_code, error_type="JobDied", error_message=reason
        )

    def _recover(self) -> None:
        """After a restart: adopt jobs still running, settle those that ended meanwhile,
        and undo any job that was being made when the service stopped."""
        for staging in self.jobs_dir.glob(f"{_STAGING_PREFIX}*"):
            self.store.remove(staging.name[len(_STAGING_PREFIX) :])
            shutil.rmtree(staging, ignore_errors=True)
        for record in self.store.all():
            if record.status in FINISHED:
                continue
            if record.pid and record.pid_started_at and alive(record.pid, record.pid_started_at):
                self.running[record.id] = Running(None, record.pid, record.pid_started_at)
                logger.info("job %s still running (pid %d): adopted", record.id, record.pid)
                continue
            outcome = self.jobs_dir / record.id / jobrun.OUTCOME_FILE
            if outcome.exists():
                self._finish_from_outcome(record.id, None)
            else:
                self.store.finish(
                    record.id,
                    "failed",
                    error_type="JobDied",
                    error_message="its process died while the detached service was down",
                )

    # -- acting on jobs ----------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        """Return a job's record, or raise a 404."""
        found = self.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if found is None:
            raise BadRequest(404, f"no job {job_id!r} on this VM")
        return found

    def kill(self, job_id: str) -> JobRecord:
        """Stop every process of a job (TERM, then KILL after a grace period).

        A job that has finished keeps its status, but what it left running (a daemon still
        carrying its marker) is stopped all the same.
        """
        record = self.record(job_id)
        if record.status in FINISHED:
            kill_job(job_id, self.running.pop(job_id, None))
            return record
        run = self.running.pop(job_id, None)
        killed = self.store.finish(job_id, "killed", error_message="killed on request")
        kill_job(job_id, run)
        self._after(killed)
        return killed

    def _after(self, record: JobRecord) -> None:
        """A ``persist=False`` job ended: have the VM delete itself after a grace period."""
        if record.persist or record.status not in FINISHED:
            return
        if self.config.self_delete == "local":
            instance_dir = os.environ.get("AZMANAGERS_INSTANCE_DIR", "")
            if not instance_dir:
                logger.warning("job %s: not a process-VM: cannot delete this VM", record.id)
                return
            command = ["local", instance_dir]
        elif self.config.self_delete == "azure":
            command = ["azure"]
        else:
            logger.warning(
                "job %s asked for its VM to be deleted, but this VM cannot delete itself", record.id
            )
            return
        logger.info(
            "job %s ended and was not to persist: deleting this VM in %g s",
            record.id,
            SELF_DELETE_GRACE_S,
        )
        env = {k: v for k, v in os.environ.items() if k != "AZMANAGERS_INSTANCE_DIR"}
        log = open(self.config.state_dir / "selfdelete.log", "ab")  # noqa: SIM115
        with log:
            subprocess.Popen(  # outside the VM's processes, so that stopping them spares it
                [
                    sys.executable,
                    "-m",
                    "azmanagers.agent.selfdelete",
                    *command,
                    str(SELF_DELETE_GRACE_S),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )

    def read(self, job_id: str, stream: str, offset: int, limit: int) -> tuple[bytes, int]:
        """Return up to ``limit`` bytes of a job's stdout or stderr from ``offset``, and the
        stream's size so far."""
        self.record(job_id)
        path = self.jobs_dir / job_id / stream
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(min(offset, size))
                return handle.read(min(limit, MAX_READ_BYTES)), size
        except FileNotFoundError:
            return b"", 0

    def result(self, job_id: str) -> JobResult:
        """Return a finished job's outcome: its pickled value, or its error with traceback."""
        record = self.record(job_id)
        if record.status not in FINISHED:
            raise BadRequest(409, f"job {job_id} is {record.status}: wait for it first")
        job_dir = self.jobs_dir / job_id
        if record.status == "succeeded":
            value = job_dir / jobrun.RESULT_FILE
            result = base64.b64encode(value.read_bytes()).decode() if value.exists() else None
            return JobResult(job=record.info(), result=result)
        try:
            outcome = json.loads((job_dir / jobrun.OUTCOME_FILE).read_text())
        except (OSError, ValueError):
            outcome = {}
        error = JobError(
            type=record.error_type or "",
            message=record.error_message or "",
            traceback=str(outcome.get("traceback", "")),
        )
        return JobResult(job=record.info(), error=error)

    def close(self) -> None:
        """Stop watching (job processes keep running) and close the store."""
        self.store.close()
