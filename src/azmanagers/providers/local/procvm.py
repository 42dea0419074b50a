"""Process-VMs: a boot script run as its own process group in its own folder.

The local provider and the emulator both use this runner, so an instance on this machine
boots exactly as an Azure VM does: by running its custom data as a script.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BOOT_SCRIPT_NAME = "custom_data.sh"
BOOT_LOG_NAME = "boot.log"
EXIT_STATUS_NAME = "exit_status"
STOP_GRACE_S = 3.0
_POLL_S = 0.1
START_TIME_TOLERANCE_S = 0.01
"""A record's start time and its process's agree within this (psutil rounds them)."""

# Variables a process-VM inherits from the caller: nothing else of the caller's
# environment (tokens, keys, credentials) reaches an instance.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
MARKER = "AZMANAGERS_INSTANCE_DIR"
"""The variable naming a process-VM's folder; every process it starts inherits it."""


@dataclass(frozen=True)
class ProcessHandle:
    """Identifies a started process-VM across processes (pid plus its start time)."""

    pid: int
    create_time: float


LOOPBACK_NETS = 254
"""Second octets ``127.1`` to ``127.254`` a pool's addresses may take (chosen by its name)."""
LOOPBACK_PER_NET = 254 * 253
"""Addresses of one pool's net (``127.N.0.2`` to ``127.N.253.254``), then they wrap around."""


def loopback_address(pool: str, index: int) -> str:
    """The loopback address of a pool's ``index``-th instance: one of its own on this machine.

    Linux answers on all of ``127.0.0.0/8``, so each process-VM listens on an address of its
    own, as a VM on its network does, and what it runs (MPI ranks, a worker's address) tells
    instances apart. The second octet comes from the pool's name, so two pools (two clusters)
    seldom share addresses; sharing one is harmless (every listener takes a free port).
    """
    net = 1 + int.from_bytes(hashlib.sha256(pool.encode()).digest()[:4], "big") % LOOPBACK_NETS
    n = index % LOOPBACK_PER_NET
    return f"127.{net}.{n // 253}.{2 + n % 253}"


def package_root() -> str:
    """Return the folder holding the ``azmanagers`` package (put on the instance's path)."""
    return str(Path(__file__).resolve().parents[3])  # src/azmanagers/providers/local/


def instance_environment(instance_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """Return the environment a process-VM starts with: a clean one plus ``extra``."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    tmp = instance_dir / "tmp"
    tmp.mkdir(exist_ok=True, mode=0o700)
    env.update(
        {
            "HOME": str(instance_dir),
            "TMPDIR": str(tmp),
            MARKER: str(instance_dir),
            "AZMANAGERS_PYTHON": sys.executable,
            "PYTHONPATH": package_root(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start(instance_dir: Path, custom_data: str, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Write the boot script into ``instance_dir`` and run it as a new process group.

    The exit status of the script is written to ``exit_status`` in the folder, so any
    process (not only the parent) can tell a failed boot from a clean stop.
    """
    instance_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (instance_dir / EXIT_STATUS_NAME).unlink(missing_ok=True)  # a reused name: a new boot
    script = instance_dir / BOOT_SCRIPT_NAME
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(custom_data)
    log_fd = os.open(instance_dir / BOOT_LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(log_fd, 0o600)  # a boot log may hold what the VM's programs print: the owner's
    log = os.fdopen(log_fd, "ab", buffering=0)
    try:
        return subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                '/bin/bash "$1"; status=$?; (umask 077; echo "$status" > "$2"); exit "$status"',
                "azm-boot",
                str(script),
                str(instance_dir / EXIT_STATUS_NAME),
            ],
            cwd=instance_dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def handle_of(proc: subprocess.Popen[bytes]) -> ProcessHandle:
    """Return the cross-process handle of a started process-VM."""
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = 0.0
    return ProcessHandle(pid=proc.pid, create_time=created)


def is_alive(handle: ProcessHandle) -> bool:
    """Tell whether the process-VM's leader still runs (not a zombie, not a reused pid)."""
    try:
        proc = psutil.Process(handle.pid)
        if (
            handle.create_time
            and abs(proc.create_time() - handle.create_time) > START_TIME_TOLERANCE_S
        ):
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def leader_matches(handle: ProcessHandle) -> bool:
    """Tell whether ``handle.pid`` is still the process the record names (same start time).

    After a reboot or a long time, a stale record's pid may lead someone else's session: only
    a leader whose start time matches the record (within 0.01 s) is ours to signal.
    """
    if not handle.create_time:
        return False
    try:
        started = psutil.Process(handle.pid).create_time()
        return bool(abs(started - handle.create_time) <= START_TIME_TOLERANCE_S)
    except psutil.Error:
        return False


def group_members(
    handle: ProcessHandle | None, instance_dir: Path | None = None
) -> list[psutil.Process]:
    """Return the live processes of a process-VM.

    They are the members of its session while its leader is the process the record names
    (``leader_matches``) and, given ``instance_dir``, any process whose environment names
    that folder: a task that started a session of its own does not escape, and a reused pid
    never makes someone else's session ours.
    """
    marker = str(instance_dir) if instance_dir is not None else None
    session = handle.pid if handle is not None and leader_matches(handle) else None
    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (session is not None and os.getsid(proc.pid) == session) or (
                marker is not None and proc.environ().get(MARKER) == marker
            ):
                members.append(proc)
    return members


def exit_status(instance_dir: Path) -> int | None:
    """Return the boot script's exit status, or None while it has not ended."""
    try:
        return int((instance_dir / EXIT_STATUS_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _signal_all(handle: ProcessHandle | None, members: list[psutil.Process], sig: int) -> None:
    if handle is not None and leader_matches(handle):  # never a group whose leader is not ours
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, sig)
    for proc in members:  # those that left the group, or whose leader is gone
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)


def stop(
    handle: ProcessHandle | None,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    instance_dir: Path | None = None,
    grace_s: float = STOP_GRACE_S,
) -> None:
    """Stop every process of the process-VM: SIGTERM, SIGKILL after ``grace_s``; reap.

    Parameters
    ----------
    handle
        The VM's leader as its record names it; None when the record cannot be read (then
        only the processes marked with ``instance_dir`` are stopped).
    proc
        The leader's ``Popen`` in the process that started it, to reap it.
    instance_dir
        The VM's folder: processes whose ``AZMANAGERS_INSTANCE_DIR`` names it are its own.
    grace_s
        Seconds between SIGTERM and SIGKILL, and the bound of each wait.
    """
    members = group_members(handle, instance_dir)
    if members:
        _signal_all(handle, members, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()
            members = group_members(handle, instance_dir)
            if not members:
                break
            time.sleep(_POLL_S)
        _signal_all(handle, members, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while group_members(handle, instance_dir) and time.monotonic() < deadline:
        time.sleep(_POLL_S)


def tail(path: Path, tail_bytes: int) -> str:
    """Return the last ``tail_bytes`` of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - tail_bytes))
            data = handle.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ProcessVM:
    """A started process-VM: its folder (its disk), its handle and, in its parent, its process."""

    folder: Path
    handle: ProcessHandle
    process: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every process of the VM (also those that left its session); reap them."""
        stop(self.handle, self.process, instance_dir=self.folder, grace_s=grace_s)


class ProcessVMRuntime:
    """Process-VMs as one object: what the provider registry hands out to the emulator.

    The emulator boots its VMs exactly as the local provider does (custom data run as a
    script in its own folder and process group, with a clean environment).
    """

    def boot(self, folder: Path, custom_data: str, extra_env: Mapping[str, str]) -> ProcessVM:
        """Run ``custom_data`` in ``folder`` with a clean environment plus ``extra_env``.

        Returns once the process group started; raises OSError when it could not.
        """
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = start(folder, custom_data, instance_environment(folder, extra_env))
        return ProcessVM(folder=folder, handle=handle_of(proc), process=proc)

    def exit_status(self, folder: Path) -> int | None:
        """Return the boot script's exit status, or None while it has not ended."""
        return exit_status(folder)

    def boot_log(self, folder: Path, tail_bytes: int) -> str:
        """Return the end of the VM's boot log ('' when there is none)."""
        return tail(folder / BOOT_LOG_NAME, tail_bytes)
