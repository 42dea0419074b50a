"""The runner: one attempt of one run, executed inside a Dask task on a worker's node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from azmanagers.batch.model import Output
from azmanagers.batch.nodecache import NodeCache
from azmanagers.batch.outputs import upload_outputs
from azmanagers.batch.processes import (
    ACTIVE,
    announce_start,
    ensure_watchdog,
    exit_waiter,
    kill_group,
    node_name,
    stop,
    task_cancelled,
    wait_for_port,
    why_not_start,
    worker_closing,
)
from azmanagers.batch.records import Attempt, OutputFile
from azmanagers.batch.staging import InputRef
from azmanagers.config.paths import active_runs_dir, eviction_flag
from azmanagers.errors import AzManagersError
from azmanagers.storage.base import Grant, Storage

if TYPE_CHECKING:
    from azmanagers.batch.mpinode import MpiMember

POLL_S = 0.05
"""How often a running command is checked for its timeout or cancel (its end wakes the
runner at once: it waits on the process's pidfd where Linux has one)."""
EVICTION_CHECK_S = 1.0
"""How often a running command checks for the node's eviction notice."""
CHUNK_LONG_RUN_S = 1.0
"""A run of a chunk that takes longer than this ends the chunk: the runs after it go back to
the driver (``deferred``), which sends them one by one."""
DROPPED_ENV_PREFIXES = ("DASK_", "AZMANAGERS_STORAGE_", "AZURE_")
"""Variables of the worker's environment a run does not inherit."""


@dataclass(frozen=True)
class PackageRef:
    """A staged application package as a run uses it."""

    name: str
    version: str
    env_name: str
    ref: InputRef


@dataclass(frozen=True)
class RunTask:
    """Everything a worker needs for one attempt of one run (pickled into the Dask task)."""

    job: str
    session: str
    """The submission this attempt belongs to (what a cancel names)."""
    run_id: str
    attempt: int
    command: str
    env: tuple[tuple[str, str], ...]
    grant: Grant
    prefix: str
    inputs: tuple[InputRef, ...] = ()
    shared: tuple[InputRef, ...] = ()
    overlay: InputRef | None = None
    packages: tuple[PackageRef, ...] = ()
    outputs: tuple[Output, ...] = ()
    timeout_s: float | None = None
    keep_dir: bool = False
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    """``AZM_*``/``AZ_BATCH_*`` variables set by the driver (e.g. multi-node runs)."""
    member: MpiMember | None = None
    """A member of an MPI gang: ``mpinode.member_step`` runs its part instead of the command."""
    announce: str = ""
    """A Dask event topic: the moment the command's process starts, the runner tells it
    (``{"gang", "event": "started", "host", "node", "time"}``) to the driver."""
    gang: str = ""
    """The gang this attempt belongs to (what ``announce`` messages carry)."""
    label: str = ""
    """A gang member's name (``worker-3``, ``node-1``): its logs go under the attempt's
    ``members/<label>/``."""
    wait_for: tuple[str, int, float] | None = None
    """(host, port, seconds): before its command starts, wait until that port accepts
    connections (a master/worker run's master), at most that long."""


@dataclass(frozen=True)
class RunResult:
    """What one attempt did: how it ended, where its logs and outputs went."""

    run_id: str
    attempt: int
    node: str
    started: float
    ended: float
    exit_code: int | None
    reason: str
    """``exit``, ``timeout``, ``cancelled``, ``evicted`` (the node got an eviction notice) or
    ``lost`` (the worker is closing): both requeue the run; ``error`` (staging or upload
    failed); or ``deferred`` (a run of a chunk that did not start: sent again, nothing spent)."""
    stdout_key: str
    stderr_key: str
    outputs: tuple[OutputFile, ...] = ()
    error: str = ""
    fetched_files: int = 0
    fetched_bytes: int = 0
    members: tuple[Attempt, ...] = ()
    """A multi-node run's other members (set by the driver's gang, not by a node)."""

    @property
    def succeeded(self) -> bool:
        return self.reason == "exit" and self.exit_code == 0

    @property
    def began(self) -> bool:
        """Whether the attempt did anything (staged, ran, kept a log): one worth recording."""
        return self.exit_code is not None or bool(self.stdout_key or self.stderr_key)


def execute(task: RunTask) -> RunResult:
    """Run one attempt: stage, run the command in its own process group, upload, report."""
    node, host = node_name()
    started = time.time()
    why_not = why_not_start(task.session)  # cancelled, closing or evicting: stage nothing
    if why_not is not None:
        return not_started(task, why_not, node=node)
    cache = NodeCache()
    # one folder per attempt, right under the job's (no folder per run left behind)
    # an MPI gang's members share the folder's name (the gang's): mpiexec's working folder is
    # then the same path on every node, where each member staged the run's inputs
    unique = task.session.rsplit(".", 1)[-1] if task.member else uuid.uuid4().hex[:8]
    attempt_dir = cache.root / "jobs" / task.job / f"{task.run_id}-attempt-{task.attempt}-{unique}"
    run_dir = attempt_dir / "wd"
    run_dir.mkdir(parents=True, mode=0o700)
    out_path, err_path = attempt_dir / "stdout.txt", attempt_dir / "stderr.txt"
    # the submission in the name: an attempt of a driver that died (whose number a resumed
    # driver may hand out again) never shares a folder with a later one
    attempt_prefix = f"{task.prefix}runs/{task.run_id}/attempt-{task.attempt}-{task.session}/"
    if task.label:
        attempt_prefix += f"members/{task.label}/"
    stdout_key, stderr_key = f"{attempt_prefix}stdout.txt", f"{attempt_prefix}stderr.txt"
    active = active_runs_dir() / f"{os.getpid()}-{task.session}-{task.run_id}-{task.attempt}"
    os.close(os.open(active, os.O_WRONLY | os.O_CREAT, 0o600))
    storage = task.grant.open()
    exit_code: int | None = None
    reason, error = "error", ""
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            step = "staging"
            try:
                env = _environment(task, cache, storage, run_dir, node, host)
                if task.wait_for is not None:
                    step = "waiting for the master's port"
                    wait_for_port(*task.wait_for, session=task.session)
                step = "starting the command"
                exit_code, reason = _command(task, run_dir, env, out, err, active)
            except (AzManagersError, OSError) as exc:
                error = f"{step} failed: {exc}"
                err.write(f"\nazmanagers: {error}\n".encode())
        succeeded = reason == "exit" and exit_code == 0
        outputs: tuple[OutputFile, ...] = ()
        try:
            upload = upload_outputs(
                storage, run_dir, task.outputs, f"{attempt_prefix}outputs/", succeeded=succeeded
            )
            outputs, error = upload.files, error or upload.error
        except (AzManagersError, OSError) as exc:
            error = error or f"uploading outputs failed: {exc}"
            reason = "error" if succeeded else reason
        stdout_key, stderr_key = _upload_logs(
            storage, (out_path, stdout_key), (err_path, stderr_key)
        )
        if not (stdout_key and stderr_key):
            error = error or "a log of this attempt could not be stored"
        return RunResult(
            task.run_id,
            task.attempt,
            node,
            started,
            time.time(),
            exit_code,
            reason,
            stdout_key,
            stderr_key,
            outputs,
            error,
            cache.fetched_files,
            cache.fetched_bytes,
        )
    finally:
        storage.close()
        active.unlink(missing_ok=True)
        if not task.keep_dir:
            shutil.rmtree(attempt_dir, ignore_errors=True)


def execute_many(tasks: tuple[RunTask, ...]) -> tuple[RunResult, ...]:
    """Run several attempts one after the other (one Dask task for a chunk of short runs).

    Each is ``execute``'s, and an error of one is that run's alone. Once one ends
    ``cancelled`` the rest end so at once; once one is ``evicted`` or ``lost``, or runs longer
    than ``CHUNK_LONG_RUN_S`` (the runs are not short any more), the rest come back
    ``deferred``, not started, for the driver to send again one by one.
    """
    results: list[RunResult] = []
    rest: str | None = None
    for task in tasks:
        if rest is not None:
            results.append(not_started(task, rest))
            continue
        try:
            result = execute(task)
        except Exception as exc:  # a bug of ours, not the run's: it fails this run only
            result = not_started(task, "error", error=f"the runner failed: {exc!r}")
        results.append(result)
        if result.reason == "cancelled":
            rest = "cancelled"
        elif (
            result.reason in ("evicted", "lost") or result.ended - result.started > CHUNK_LONG_RUN_S
        ):
            rest = "deferred"
    return tuple(results)


def not_started(task: RunTask, reason: str, *, node: str = "", error: str = "") -> RunResult:
    """The result of an attempt that did not start its command (nothing staged, no logs)."""
    now = time.time()
    return RunResult(
        task.run_id,
        task.attempt,
        node or node_name()[0],
        now,
        now,
        None,
        reason,
        "",
        "",
        error=error,
    )


def _upload_logs(storage: Storage, *pairs: tuple[Path, str]) -> tuple[str, ...]:
    """Store each log; return the keys stored ("" for a log that could not be)."""
    stored = []
    for path, key in pairs:
        try:
            storage.put_file(path, key)
        except (AzManagersError, OSError):
            key = ""  # the run's outcome stands; its record says the log is missing
        stored.append(key)
    return tuple(stored)


def _environment(
    task: RunTask, cache: NodeCache, storage: Storage, run_dir: Path, node: str, host: str
) -> dict[str, str]:
    for ref in task.shared:
        cache.place(storage, ref, run_dir, link=True)
    for ref in task.inputs:
        cache.place(storage, ref, run_dir, link=False)
    if task.overlay is not None:
        cache.place(storage, task.overlay, run_dir, link=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED_ENV_PREFIXES)}
    paths = []
    for pkg in task.packages:
        folder = cache.package(storage, pkg.ref, pkg.name, pkg.version)
        env[pkg.env_name] = str(folder)
        env[f"AZM_PACKAGE_{pkg.env_name.removeprefix('AZ_BATCH_APP_PACKAGE_')}"] = str(folder)
        paths += [str(p) for p in _bin_dirs(folder)]
    if paths:
        env["PATH"] = os.pathsep.join([*paths, env.get("PATH", os.defpath)])
    env.update(task.env)
    tmp = run_dir.parent / "tmp"
    tmp.mkdir(exist_ok=True, mode=0o700)
    env.update(
        {
            "AZM_JOB": task.job,
            "AZM_RUN_ID": task.run_id,
            "AZM_ATTEMPT": str(task.attempt),
            "AZM_RUN_DIR": str(run_dir),
            "AZM_NODE": node,
            "AZM_NODE_SHARED_DIR": str(cache.shared_dir),
            "AZ_BATCH_JOB_ID": task.job,
            "AZ_BATCH_TASK_ID": task.run_id,
            "AZ_BATCH_TASK_DIR": str(run_dir.parent),
            "AZ_BATCH_TASK_WORKING_DIR": str(run_dir),
            "AZ_BATCH_NODE_ID": node,
            "AZ_BATCH_NODE_ROOT_DIR": str(cache.root),
            "AZ_BATCH_NODE_SHARED_DIR": str(cache.shared_dir),
            "AZM_HOST": host,
            "AZ_BATCH_HOST_LIST": host,
            "AZ_BATCH_NODE_LIST": host,
            "TMPDIR": str(tmp),
        }
    )
    env.update(task.extra_env)
    return env


def _command(
    task: RunTask,
    run_dir: Path,
    env: dict[str, str],
    out: IO[bytes],
    err: IO[bytes],
    active: Path,
) -> tuple[int | None, str]:
    """Run the attempt's command, or its part of an MPI gang."""
    if task.member is None:
        return _run(task, run_dir, env, out, err, active)
    from azmanagers.batch.mpinode import member_step

    deadline = None if task.timeout_s is None else time.monotonic() + task.timeout_s

    def run(command: str) -> tuple[int | None, str]:  # coordination and command share a timeout
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return _run(replace(task, command=command, timeout_s=left), run_dir, env, out, err, active)

    return member_step(task.member, run_dir, env, run, task.session, command=task.command)


def _bin_dirs(folder: Path) -> list[Path]:
    """A package's ``bin/`` (or its single top folder's), else the package folder itself."""
    for base in (folder, *[p for p in folder.iterdir() if p.is_dir()][:1]):
        if (base / "bin").is_dir():
            return [base / "bin"]
    return [folder]


def _run(
    task: RunTask,
    run_dir: Path,
    env: dict[str, str],
    out: IO[bytes],
    err: IO[bytes],
    active: Path,
) -> tuple[int | None, str]:
    key = (task.session, task.run_id)
    with ACTIVE.lock:
        if task.session in ACTIVE.cancelled:
            return None, "cancelled"
        if eviction_flag().exists():
            return None, "evicted"
        if worker_closing():
            return None, "lost"  # a run queued behind others in a chunk: it goes elsewhere
        ensure_watchdog()
        proc = subprocess.Popen(
            ["bash", "-c", task.command],
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        ACTIVE.procs[key] = proc
        active.write_text(str(proc.pid))  # the group the watchdog kills if the worker dies
    if task.announce:
        announce_start(task.announce, task.gang, task.label, proc.pid)
    deadline = None if task.timeout_s is None else time.monotonic() + task.timeout_s
    reason = "exit"
    flag = eviction_flag()
    next_flag_check = time.monotonic() + EVICTION_CHECK_S
    ended = exit_waiter(proc)
    try:
        while proc.poll() is None:
            if time.monotonic() >= next_flag_check:
                next_flag_check = time.monotonic() + EVICTION_CHECK_S
                if flag.exists():
                    reason = "evicted"
                    stop(proc)
                    break
                if worker_closing():
                    reason = "lost"  # the worker is going away: its runs go with it
                    stop(proc)
                    break
                if task_cancelled():  # its driver went away (or cancelled it): nobody waits
                    reason = "cancelled"
                    stop(proc)
                    break
            if deadline is not None and time.monotonic() > deadline:
                reason = "timeout"
                stop(proc)
                break
            with ACTIVE.lock:
                cancelled = task.session in ACTIVE.cancelled
            if cancelled:
                reason = "cancelled"
                stop(proc)
                break
            ended.wait(POLL_S)  # returns as soon as the command ends
        with ACTIVE.lock:
            if task.session in ACTIVE.cancelled and reason == "exit" and proc.returncode != 0:
                reason = "cancelled"
    finally:
        ended.close()
        kill_group(proc, signal.SIGKILL)  # nothing of the run outlives it
        proc.wait()
        with ACTIVE.lock:
            ACTIVE.procs.pop(key, None)
    return proc.returncode, reason
