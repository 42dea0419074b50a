"""Fixtures shared by every test: a private AZMANAGERS_HOME and a check for leaked processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest_plugins = ["tests.azurite"]

LEAK_GRACE_S = 10.0
EVENTUALLY_S = 120.0
"""How long ``eventually`` waits by default."""


def eventually(
    check: Callable[[], bool], what: str, timeout: float = EVENTUALLY_S, step_s: float = 0.1
) -> None:
    """Poll ``check`` every ``step_s`` until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step_s)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def command_line(proc: psutil.Process) -> list[str]:
    """A process's command line, or [] when it ended meanwhile."""
    try:
        return [str(part) for part in proc.cmdline()]
    except psutil.Error:
        return []


def processes_under(home: Path) -> list[psutil.Process]:
    """Return live processes started as instances under ``home`` (found by their environment)."""
    marker = str(home)
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            value = proc.environ().get("AZMANAGERS_INSTANCE_DIR", "")
            if value.startswith(marker):
                found.append(proc)
    return found


def _close_clusters() -> None:
    from azmanagers.cluster import api

    for template in list(api.clusters()):
        with contextlib.suppress(Exception):
            api.rmprocs(template=template)


@pytest.fixture(autouse=True)
def azm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Give each test its own AZMANAGERS_HOME; fail the test if it leaves a process behind."""
    home = tmp_path / "azm-home"
    monkeypatch.setenv("AZMANAGERS_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("AZMANAGERS_") and name != "AZMANAGERS_HOME":
            monkeypatch.delenv(name)
    # No test may reach Azure (or its IMDS): unless a test points the azure provider at the
    # emulator, it aims at a closed loopback port with a dummy token.
    monkeypatch.setenv("AZMANAGERS_ARM_ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setenv("AZMANAGERS_ARM_TOKEN", "offline-tests")
    monkeypatch.setenv("AZMANAGERS_IMDS_ENDPOINT", "http://127.0.0.1:9")
    yield home
    _close_clusters()
    deadline = time.monotonic() + LEAK_GRACE_S
    leaked = processes_under(home)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked = processes_under(home)
    if leaked:
        described = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in leaked]
        for proc in leaked:
            with contextlib.suppress(psutil.Error, OSError):
                os.killpg(os.getsid(proc.pid), signal.SIGKILL)
        pytest.fail("test left processes behind:\n" + "\n".join(described))


HAS_AZMANAGERS = '[ "$1" = -c ] && exit 0  # the boot script asks: is azmanagers installed?\n'
"""The first line of a stand-in interpreter: it answers the boot script's version check."""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """An 'interpreter' that boots but never joins: it sleeps (a stuck instance)."""
    path = tmp_path / "stuck-python"
    path.write_text(
        f"#!/bin/bash\n{HAS_AZMANAGERS}echo 'stuck-python: pretending to start'\nexec sleep 600\n"
    )
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def local_client(workers: int) -> Iterator[Any]:
    """A local cluster of ``workers`` process-VMs (under the test's AZMANAGERS_HOME) and a
    Dask client of it; both gone afterwards."""
    from distributed import Client

    import azmanagers

    cluster = azmanagers.addprocs("local", workers, waitfor=True, timeout=120)
    try:
        client = Client(cluster, security=cluster.security, set_as_default=False)
        yield client
        client.close()
    finally:
        azmanagers.rmprocs()
