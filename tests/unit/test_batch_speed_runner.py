"""The runner wakes when its command ends, not on a polling tick, and still times out."""

from __future__ import annotations

import subprocess
import time

from azmanagers.batch.processes import exit_waiter


def test_the_waiter_returns_when_the_command_ends_not_at_its_timeout() -> None:
    proc = subprocess.Popen(["sleep", "0.2"])
    waiter = exit_waiter(proc)
    try:
        started = time.monotonic()
        waiter.wait(10.0)
        took = time.monotonic() - started
        assert proc.poll() == 0
        assert 0.1 < took < 5.0  # woken by the end, long before the 10 s
    finally:
        waiter.close()
        proc.kill()
        proc.wait()


def test_the_waiter_gives_up_after_its_timeout_while_the_command_runs() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    waiter = exit_waiter(proc)
    try:
        started = time.monotonic()
        waiter.wait(0.2)
        took = time.monotonic() - started
        assert proc.poll() is None and 0.15 < took < 5.0
    finally:
        waiter.close()
        waiter.close()  # closing twice is harmless
        proc.kill()
        proc.wait()
