"""A session-scoped Azurite (Blob emulator) on a free loopback port, for the storage tests."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BLOB = ROOT / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
"""Azurite's well-known development key (public, documented by Microsoft)."""

LISTENING = re.compile(r"Blob service successfully listens on http://127\.0\.0\.1:(\d+)")


def connection_string(port: int) -> str:
    """Return the connection string of the Azurite account on ``port``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    """Kill Azurite's whole process group: TERM, then KILL after STOP_TIMEOUT_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # any child left in the group


@contextlib.contextmanager
def running_azurite(workdir: Path) -> Iterator[str]:
    """Start ``azurite-blob`` (in memory, 127.0.0.1, a free port, its own process group) in
    ``workdir``; yield its connection string; kill the group on the way out.

    Raises RuntimeError when Azurite is missing or does not start within START_TIMEOUT_S.
    """
    if not AZURITE_BLOB.exists() or shutil.which("node") is None:
        raise RuntimeError(
            f"Azurite is not installed ({AZURITE_BLOB} missing, or no node on PATH): "
            "run `npm ci` in the repository root (package.json pins azurite)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZMANAGERS_")}
    proc = subprocess.Popen(
        [
            str(AZURITE_BLOB),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
        ],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield connection_string(_listening_port(proc))
    finally:
        _stop(proc)


def _listening_port(proc: subprocess.Popen[str]) -> int:
    """The port Azurite says it listens on (its output is drained for as long as it runs)."""
    stdout = proc.stdout
    if stdout is None:
        raise RuntimeError("Azurite has no stdout pipe")
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # keeps reading so Azurite never blocks on a full pipe
        for line in stdout:
            lines.put(line)

    threading.Thread(target=drain, name="azurite-output", daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (proc.poll() is not None and lines.empty()):
            raise RuntimeError("Azurite did not start:\n" + "".join(seen[-20:]))
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=min(left, 0.5)))
            if match := LISTENING.search(seen[-1]):
                return int(match.group(1))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite for the session (``running_azurite``): its connection string.

    Skips when Azurite is not installed (run ``npm ci`` in the repository root); an error
    when it does not start.
    """
    if not AZURITE_BLOB.exists() or shutil.which("node") is None:
        pytest.skip(
            f"Azurite is not installed ({AZURITE_BLOB} missing, or no node on PATH): "
            "run `npm ci` in the repository root (package.json pins azurite)"
        )
    with running_azurite(tmp_path_factory.mktemp("azurite")) as connection:
        yield connection
