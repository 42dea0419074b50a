"""The runner: one attempt of one run, executed inside a Dask task on a worker's node."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from azmanagers.batch.model import Output
from azmanagers.batch.nodecache import NodeCache
from azmanagers.batch.outputs import upload_outputs
from azmanagers.batch.processes import (
    ACTIVE,
    ensure_watchdog,
    exit_waiter,
    hold_while_evicting,
    kill_group,
    stop,
    worker_closing,
)
from azmanagers.batch.records import OutputFile
from azmanagers.batch.staging import InputRef
from azmanagers.config.paths import active_runs_dir, eviction_flag
from azmanagers.errors import AzManagersError
from azmanagers.storage.base import Grant, Storage

POLL_S = 0.05
"""How often a running command is checked for its timeout or cancel (its end wakes the
runner at once: it waits on the process's pidfd where Linux has one)."""
EVICTION_CHECK_S = 1.0
"""How often a running command checks for the node's eviction notice."""
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
    ``lost`` (the worker is closing): both requeue the run; or ``error`` (staging or upload
    failed)."""
    stdout_key: str
    stderr_key: str
    outputs: tuple[OutputFile, ...] = ()
    error: str = ""
    fetched_files: int = 0
    fetched_bytes: int = 0

    @property
    def succeeded(self) -> bool:
        return self.reason == "exit" and self.exit_code == 0


def node_name() -> tuple[str, str]:
    """This node's name (its Dask worker's name: the instance) and the address it listens on."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return socket.gethostname(), socket.gethostname()
    host = str(worker.address).rsplit("://", 1)[-1].rsplit(":", 1)[0]
    return str(worker.name), host


def execute(task: RunTask) -> RunResult:
    """Run one attempt: stage, run the command in its own process group, upload, report."""
    node, host = node_name()
    started = time.time()
    held = hold_while_evicting(task.session)  # a node about to go starts and stages nothing
    if held is not None:
        return RunResult(task.run_id, task.attempt, node, started, time.time(), None, held, "", "")
    cache = NodeCache()
    # one folder per attempt, right under the job's (no folder per run left behind)
    attempt_dir = (
        cache.root
        / "jobs"
        / task.job
        / f"{task.run_id}-attempt-{task.attempt}-{uuid.uuid4().hex[:8]}"
    )
    run_dir = attempt_dir / "wd"
    run_dir.mkdir(parents=True, mode=0o700)
    out_path, err_path = attempt_dir / "stdout.txt", attempt_dir / "stderr.txt"
    attempt_prefix = f"{task.prefix}runs/{task.run_id}/attempt-{task.attempt}/"
    stdout_key, stderr_key = f"{attempt_prefix}stdout.txt", f"{attempt_prefix}stderr.txt"
    active = active_runs_dir() / f"{os.getpid()}-{task.session}-{task.run_id}-{task.attempt}"
    os.close(os.open(active, os.O_WRONLY | os.O_CREAT, 0o600))
    storage = task.grant.open()
    exit_code: int | None = None
    reason, error = "error", ""
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                env = _environment(task, cache, storage, run_dir, node, host)
                exit_code, reason = _run(task, run_dir, env, out, err, active)
            except (AzManagersError, OSError) as exc:
                error = f"staging failed: {exc}"
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
        _upload_logs(storage, ((out_path, stdout_key), (err_path, stderr_key)))
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

    Each is ``execute``'s: a cancel ends the rest at once as ``cancelled``, an eviction
    notice as ``evicted``, and a closing worker as ``lost`` (requeued).
    """
    return tuple(execute(task) for task in tasks)


def _upload_logs(storage: Storage, pairs: tuple[tuple[Path, str], ...]) -> None:
    for path, key in pairs:
        try:
            storage.put_file(path, key)
        except (AzManagersError, OSError):
            continue  # the run's outcome stands; its record says the log is missing


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
