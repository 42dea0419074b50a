"""The processes of batch runs on a worker: the active set, cancel, the watchdog, waiting for
a run's end and killing its process group, and holding runs on a node with an eviction notice."""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from azmanagers.config.paths import active_runs_dir, eviction_flag
from azmanagers.errors import BatchError

KILL_GRACE_S = 5.0
"""Between SIGTERM to the run's process group and SIGKILL."""
EVICTION_HOLD_S = 45.0
"""A run that reaches a node with an eviction notice waits this long (Azure gives a spot VM
30 s) for the node's worker to close, holding the worker's thread so that no other run starts
there, then goes back to the driver: it does not bounce between the driver and a node that is
about to go (each bounce would spend one of its requeues)."""
EVICTION_HOLD_STEP_S = 0.25
PORT_PROBE_S = 0.2
"""How often a master/worker run's worker tries the master's port while it waits for it."""


class Active:
    """The runs in progress in this worker process, so a cancel can kill their groups."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        self.cancelled: set[str] = set()


ACTIVE = Active()


WATCHDOG = (
    'while kill -0 "$1" 2>/dev/null; do sleep 1; done; '
    'for f in "$2/$1-"*; do pg=$(cat "$f" 2>/dev/null) && kill -KILL -- "-$pg" 2>/dev/null; done'
)
"""One per worker process, in a session of its own: when the worker process ends (even by a
kill -9, which no hook of ours sees) it kills, within a second, the process group of every run
the worker had started (each run's group id is in its file in the active-runs folder)."""
_WATCHDOG_FOR: set[int] = set()


def ensure_watchdog() -> None:
    """Start this worker process's watchdog once (call with ``ACTIVE.lock`` held)."""
    if os.getpid() in _WATCHDOG_FOR:
        return
    subprocess.Popen(
        ["bash", "-c", WATCHDOG, "azm-watchdog", str(os.getpid()), str(active_runs_dir())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _WATCHDOG_FOR.add(os.getpid())


@atexit.register
def _kill_active_runs() -> None:
    """When the worker process ends (its scheduler gone, a shutdown), no run outlives it:
    every run is in a session of its own, which the worker's own group kill would miss."""
    with ACTIVE.lock:
        procs = list(ACTIVE.procs.values())
    for proc in procs:
        kill_group(proc, signal.SIGKILL)


def cancel_session(session: str) -> int:
    """Kill the process group of every run of a submission in this worker (via ``client.run``).

    Returns how many runs were signalled. Later attempts of that submission in this process
    end at once as ``cancelled``; a new submission of the job (``retry``) is not affected.
    """
    with ACTIVE.lock:
        ACTIVE.cancelled.add(session)
        procs = [p for (s, _), p in ACTIVE.procs.items() if s == session]
    for proc in procs:
        kill_group(proc, signal.SIGTERM)
    return len(procs)


class ExitWaiter:
    """Waits for a child's end: on its pidfd (woken the moment it ends, no polling), or by
    ``Popen.wait``'s own polling where there is no pidfd."""

    def __init__(self, proc: subprocess.Popen[bytes], pidfd: int) -> None:
        self.proc = proc
        self.pidfd = pidfd
        self.poller: select.poll | None = None
        if pidfd >= 0:
            self.poller = select.poll()
            self.poller.register(pidfd, select.POLLIN)

    def wait(self, timeout_s: float) -> None:
        """Return when the child ended or after ``timeout_s`` seconds, whichever comes first."""
        if self.poller is not None:
            self.poller.poll(max(0, round(timeout_s * 1000)))
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
            self.poller = None


def exit_waiter(proc: subprocess.Popen[bytes]) -> ExitWaiter:
    if sys.platform != "linux":
        return ExitWaiter(proc, -1)  # no pidfd here: Popen.wait polls
    try:
        return ExitWaiter(proc, os.pidfd_open(proc.pid))
    except OSError:  # a kernel older than 5.3, or the child was reaped already
        return ExitWaiter(proc, -1)


def task_cancelled() -> bool:
    """Whether the Dask task running in this thread was cancelled or released: its caller
    cancelled it, or its client (the job's driver) went away. Call it from the task's thread."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError):
        return False
    task = worker.state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released", "forgotten")


def worker_closing() -> bool:
    """Whether the Dask worker this runs in is closing (its close waits for our thread)."""
    try:
        from distributed import get_worker

        status = get_worker().status.name
    except (ImportError, ValueError):
        return False
    return status in ("closing", "closing_gracefully", "closed", "failed")


def stop(proc: subprocess.Popen[bytes]) -> None:
    kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL)


def kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def why_not_start(session: str) -> str | None:
    """Before a run stages anything: whether it should start on this node at all.

    Returns None to start it; otherwise why not: ``cancelled`` (its submission was cancelled),
    ``lost`` (the worker is closing: the run goes elsewhere), or ``evicted``. A run that meets
    an eviction notice waits up to ``EVICTION_HOLD_S`` for it to be withdrawn or for the worker
    to close, holding the worker's thread so that no other run starts there.
    """
    flag = eviction_flag()
    deadline = time.monotonic() + EVICTION_HOLD_S
    while True:
        with ACTIVE.lock:
            if session in ACTIVE.cancelled:
                return "cancelled"
        if worker_closing():
            return "lost"
        if not flag.exists():
            return None
        if time.monotonic() >= deadline:
            return "evicted"
        time.sleep(EVICTION_HOLD_STEP_S)


def node_name() -> tuple[str, str]:
    """This node's name (its Dask worker's name: the instance) and the address it listens on."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return socket.gethostname(), socket.gethostname()
    host = str(worker.address).rsplit("://", 1)[-1].rsplit(":", 1)[0]
    return str(worker.name), host


def wait_for_port(host: str, port: int, seconds: float, *, session: str) -> None:
    """Return once ``host:port`` accepts a connection; AzManagersError after ``seconds``, or
    when the run is cancelled or its worker closes meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=PORT_PROBE_S):
                return
        except OSError:
            pass
        with ACTIVE.lock:
            if session in ACTIVE.cancelled:
                raise BatchError("the run was cancelled while it waited for the master")
        if worker_closing() or time.monotonic() >= deadline:
            raise BatchError(
                f"the master's port {host}:{port} did not accept connections within "
                f"{seconds:g} s; look at the master's log, or raise port_wait"
            )
        time.sleep(PORT_PROBE_S)


def announce_start(topic: str, gang: str, label: str, pid: int) -> None:
    """Tell the driver (a Dask event on ``topic``: pushed, not polled) that a gang member's
    command started, and where."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    node, host = node_name()
    message = {
        "gang": gang,
        "event": "started",
        "label": label,
        "node": node,
        "host": host,
        "pid": pid,
        "time": time.time(),
    }
    worker.log_event(topic, message)
