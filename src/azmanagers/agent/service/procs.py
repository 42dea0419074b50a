"""A job's processes: found by its marker variable and its process tree, and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import psutil

JOB_MARKER = "AZMANAGERS_JOB_ID"
"""Set in every job's environment (and inherited by its children, also by those that start
a session of their own): a kill finds them by it."""
KILL_GRACE_S = 5.0
"""Between SIGTERM and SIGKILL."""
POLL_S = 0.1
_ROUNDS = 3
"""Times a kill looks again for processes started while it was killing."""


@dataclass
class Running:
    """A job whose process this service watches."""

    process: subprocess.Popen[bytes] | None  # None: adopted after a restart
    pid: int
    started_at: float


def create_time(pid: int) -> float | None:
    """The start time of ``pid`` (psutil), or None when there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def alive(pid: int, started_at: float) -> bool:
    """Whether ``pid`` is still the process that started at ``started_at``."""
    created = create_time(pid)
    if created is None or abs(created - started_at) > 1.0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def job_processes(job_id: str, run: Running | None) -> list[psutil.Process]:
    """The live processes of a job: its leader's tree and every process carrying its marker."""
    found: dict[int, psutil.Process] = {}
    if run is not None and alive(run.pid, run.started_at):
        with contextlib.suppress(psutil.Error):
            leader = psutil.Process(run.pid)
            found[leader.pid] = leader
            for child in leader.children(recursive=True):
                found[child.pid] = child
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me or proc.pid in found:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get(JOB_MARKER) == job_id:
                found[proc.pid] = proc
    return [p for p in found.values() if _running(p)]


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _signal(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)


def kill_job(job_id: str, run: Running | None) -> None:
    """Stop every process of the job: TERM, then KILL after ``KILL_GRACE_S``.

    The leader's process group gets the signal too (as before), then each process found by
    ``job_processes`` (children in sessions of their own, orphans re-parented to init).
    """
    for _ in range(_ROUNDS):
        procs = job_processes(job_id, run)
        if not procs:
            break
        if run is not None and alive(run.pid, run.started_at):
            with contextlib.suppress(OSError):
                os.killpg(run.pid, signal.SIGTERM)
        _signal(procs, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and any(_running(p) for p in procs):
            if run is not None and run.process is not None:
                run.process.poll()  # reap the leader, our child
            time.sleep(POLL_S)
        _signal([p for p in procs if _running(p)], signal.SIGKILL)
    if run is not None and run.process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.process.wait(KILL_GRACE_S)
