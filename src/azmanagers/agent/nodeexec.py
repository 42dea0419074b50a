"""Commands and setup scripts run on a node by its worker (``exec``, ``setup``): no sshd."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

OUTPUT_TAIL_BYTES = 64 * 1024
"""The end of each stream that comes back (the whole output goes to a file on the node)."""
SETUP_DIR = "setup"
"""Under the instance's folder: setup scripts, their logs and ``<sha256>.done`` markers."""
KILL_GRACE_S = 5.0


def _node_dir() -> Path:
    return Path(os.environ.get("AZMANAGERS_INSTANCE_DIR") or tempfile.gettempdir())


def _node_name() -> str:
    return os.environ.get("AZMANAGERS_INSTANCE_ID") or socket.gethostname()


def run_command(
    command: str,
    timeout_s: float,
    env: dict[str, str] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Run ``command`` with bash in its own process group; return its exit code (128 + N when
    a signal N ended it; -1 on a timeout, after the group was killed), the tails of stdout
    and stderr and the seconds. ``pass_fds`` stay open in the command (``/dev/fd/N``)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="azm-exec-") as tmp:
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(_node_dir()),
                env={**os.environ, **(env or {})},
                start_new_session=True,
                pass_fds=pass_fds,
            )
            timed_out = False
            try:
                code = proc.wait(timeout=timeout_s)
                code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                code, timed_out = -1, True
        return {
            "node": _node_name(),
            "exit_code": code,
            "stdout": _tail(out_path),
            "stderr": _tail(err_path),
            "duration_s": time.monotonic() - started,
            "timed_out": timed_out,
        }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group's leader is gone: make sure no member outlives it
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - OUTPUT_TAIL_BYTES))
        data = handle.read()
    text = data.decode("utf-8", errors="replace")
    return text if size <= OUTPUT_TAIL_BYTES else f"[... {size - len(data)} bytes cut]\n{text}"


def script_sha256(script: str) -> str:
    """The digest that names a setup script (its marker file on each node)."""
    return hashlib.sha256(script.encode()).hexdigest()


def setup_done(sha256: str) -> bool:
    """Whether this node ran the setup script ``sha256`` successfully."""
    return (_node_dir() / SETUP_DIR / f"{sha256}.done").exists()


def run_setup(
    script: str, timeout_s: float, only_new: bool = False, echo_fd: int | None = None
) -> dict[str, Any]:
    """Run the setup script on this node (its output also kept in ``setup/<sha>.log``, and
    written to ``echo_fd`` as it comes: the boot log); mark it done on success. With
    ``only_new``, a node that ran it already is skipped."""
    sha = script_sha256(script)
    folder = _node_dir() / SETUP_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # a script may hold a token
    if only_new and setup_done(sha):
        return {"node": _node_name(), "exit_code": 0, "skipped": True, "stdout": "", "stderr": ""}
    path = folder / f"{sha}.sh"
    path.touch(mode=0o600)
    path.write_text(script)
    log = shlex.quote(str(folder / f"{sha}.log"))
    echo = "" if echo_fd is None else f" /dev/fd/{echo_fd}"
    command = f"bash {shlex.quote(str(path))} 2>&1 | tee -a {log}{echo}; exit ${{PIPESTATUS[0]}}"
    result = run_command(command, timeout_s, pass_fds=() if echo_fd is None else (echo_fd,))
    marker = folder / f"{sha}.done"
    if result["exit_code"] == 0:
        marker.write_text(f"{time.time():.0f}\n")
    else:
        marker.unlink(missing_ok=True)
    return {**result, "skipped": False}


async def run_command_async(
    command: str, timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``run_command`` off the worker's event loop (so the worker keeps its heartbeats)."""
    return await asyncio.to_thread(run_command, command, timeout_s, env)


async def run_setup_async(script: str, timeout_s: float, only_new: bool = False) -> dict[str, Any]:
    """``run_setup`` off the worker's event loop."""
    return await asyncio.to_thread(run_setup, script, timeout_s, only_new)
