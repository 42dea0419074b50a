"""A caller killed mid-cluster on the azure provider: azm gc finds its scale set by tag."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from azmanagers.cli import main as azm
from azmanagers.emulator import Emulator

pytestmark = pytest.mark.integration

CALLER = textwrap.dedent(
    """
    import time, azmanagers
    cluster = azmanagers.addprocs("myscaleset", 1, waitfor=True, timeout=90, death_timeout_s=5)
    print(cluster.pool, flush=True)
    time.sleep(600)
    """
)


def test_gc_deletes_a_killed_callers_scale_set(
    emulated_azure: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        pool = proc.stdout.readline().strip()
        assert pool.startswith("myscaleset-"), "the caller did not start its cluster"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert [k[2] for k in emulated_azure.state.scalesets] == [pool.lower()]
        capsys.readouterr()
        assert azm(["gc", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"would delete azure scaleset {pool}" in out and "owner process is gone" in out
        assert emulated_azure.state.scalesets  # a dry run deletes nothing
        assert azm(["gc"]) == 0
        deadline = time.monotonic() + 30
        while emulated_azure.state.scalesets and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emulated_azure.state.scalesets == {}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
