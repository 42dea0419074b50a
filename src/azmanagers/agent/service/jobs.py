"""The detached service's jobs: start each in its own process, watch it, keep its record.

Each job runs ``azmanagers.agent.service.run`` in a directory of its own with a clean
environment, in a session of its own (it survives a restart of the service, and is killed
as a group). Records live in SQLite (``jobstore``): a restarted service adopts the jobs
still running and marks those that died meanwhile as failed, with the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from azmanagers.agent.service import run as jobrun
from azmanagers.agent.service.store import FINISHED, JobRecord, JobStore

logger = logging.getLogger("azmanagers.detached")

MAX_READ_BYTES = 4 * 1024 * 1024
"""The most of a job's output one read returns."""
POLL_S = 0.1
KILL_GRACE_S = 5.0
SELF_DELETE_GRACE_S = float(os.environ.get("AZMANAGERS_SELF_DELETE_GRACE_S", "30"))
"""After a persist=False job ends, the VM waits this long (for its result to be read)."""
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
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


@dataclass
class _Running:
    """A job whose process this service watches."""

    process: subprocess.Popen[bytes] | None  # None: adopted after a restart
    pid: int
    started_at: float


class JobService:
    """Starts jobs, watches their processes, and keeps their records."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.jobs_dir = config.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(config.state_dir / "jobs.db")
        self.running: dict[str, _Running] = {}
        self.on_exit: Callable[[], None] | None = None
        """Called (from a watcher thread) when a job's process exits: wakes the service."""
        self.started_at = time.time()
        self._recover()

    # -- starting ----------------------------------------------------------------------
    def submit(self, request: dict[str, Any]) -> JobRecord:
        """Check a run request, write its files, start its process; return its record."""
        code, call = request.get("code"), request.get("call")
        if (code is None) == (call is None):
            raise BadRequest(400, "give exactly one of 'code' (a string) or 'call' (base64)")
        if code is not None and not isinstance(code, str):
            raise BadRequest(400, "'code' must be a string of Python source")
        name = request.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise BadRequest(400, "'name' must be a string of at most 200 characters")
        env = request.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise BadRequest(400, "'env' must map variable names to string values")
        persist = request.get("persist", True)
        if not isinstance(persist, bool):
            raise BadRequest(400, "'persist' must be true or false")
        blobs = {"call": call, "bundle": request.get("bundle")}
        decoded: dict[str, bytes] = {}
        for key, value in blobs.items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise BadRequest(400, f"'{key}' must be a base64 string")
            try:
                decoded[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(400, f"'{key}' is not valid base64") from None
        job_id = secrets.token_hex(8)
        job_dir = self.jobs_dir / job_id
        (job_dir / "work").mkdir(parents=True, mode=0o700)
        if code is not None:
            (job_dir / jobrun.CODE_FILE).write_text(code)
        else:
            (job_dir / jobrun.CALL_FILE).write_bytes(decoded["call"])
        if "bundle" in decoded:
            (job_dir / "bundle.pkl").write_bytes(decoded["bundle"])
        record = JobRecord(
            id=job_id,
            name=name,
            kind="code" if code is not None else "call",
            status="queued",
            created_at=time.time(),
            persist=persist,
        )
        self.store.add(record)
        return self._start(record, env)

    def _start(self, record: JobRecord, env: dict[str, str]) -> JobRecord:
        job_dir = self.jobs_dir / record.id
        job_env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        job_env.update(env)
        job_env.update(
            PYTHONUNBUFFERED="1",
            AZMANAGERS_JOB_ID=record.id,
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
                    start_new_session=True,  # survives a restart of the service; killed as a group
                )
        except OSError as exc:
            return self.store.finish(
                record.id, "failed", error_type="OSError", error_message=f"cannot start: {exc}"
            )
        started = _create_time(process.pid) or time.time()
        self.running[record.id] = _Running(process, process.pid, started)
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
            elif _alive(run.pid, run.started_at):
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
        """After a restart: adopt jobs still running, settle those that ended meanwhile."""
        for record in self.store.all():
            if record.status in FINISHED:
                continue
            if record.pid and record.pid_started_at and _alive(record.pid, record.pid_started_at):
                self.running[record.id] = _Running(None, record.pid, record.pid_started_at)
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
        found = self.store.get(job_id) if JOB_ID.match(job_id) else None
        if found is None:
            raise BadRequest(404, f"no job {job_id!r} on this VM")
        return found

    def kill(self, job_id: str) -> JobRecord:
        """Stop a job's process group (TERM, then KILL after a grace period)."""
        record = self.record(job_id)
        if record.status in FINISHED:
            return record
        run = self.running.pop(job_id, None)
        killed = self.store.finish(job_id, "killed", error_message="killed on request")
        if run is not None:
            _kill_group(run)
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

    def result(self, job_id: str) -> dict[str, Any]:
        """Return a finished job's outcome: its pickled value, or its error with traceback."""
        record = self.record(job_id)
        if record.status not in FINISHED:
            raise BadRequest(409, f"job {job_id} is {record.status}: wait for it first")
        job_dir = self.jobs_dir / job_id
        out: dict[str, Any] = {"job": record.public(), "result": None, "error": None}
        if record.status == "succeeded" and (job_dir / jobrun.RESULT_FILE).exists():
            out["result"] = base64.b64encode((job_dir / jobrun.RESULT_FILE).read_bytes()).decode()
        elif record.status != "succeeded":
            try:
                outcome = json.loads((job_dir / jobrun.OUTCOME_FILE).read_text())
            except (OSError, ValueError):
                outcome = {}
            out["error"] = {
                "type": record.error_type or "",
                "message": record.error_message or "",
                "traceback": str(outcome.get("traceback", "")),
            }
        return out

    def close(self) -> None:
        """Stop watching (job processes keep running) and close the store."""
        self.store.close()


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int, started_at: float) -> bool:
    """Whether ``pid`` is still the process that started at ``started_at``."""
    created = _create_time(pid)
    if created is None or abs(created - started_at) > 1.0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _kill_group(run: _Running) -> None:
    if not _alive(run.pid, run.started_at):
        return
    try:
        os.killpg(run.pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if run.process is not None and run.process.poll() is not None:
            return
        if run.process is None and not _alive(run.pid, run.started_at):
            return
        time.sleep(POLL_S)
    with contextlib.suppress(OSError):
        os.killpg(run.pid, signal.SIGKILL)
    if run.process is not None:
        run.process.wait(KILL_GRACE_S)
