"""A run that reaches a node with an eviction notice waits there instead of bouncing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from azmanagers.batch import processes
from azmanagers.batch.processes import ACTIVE, why_not_start
from azmanagers.config.paths import NODE_DIR_ENV, eviction_flag


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(NODE_DIR_ENV, str(tmp_path / "node"))
    monkeypatch.setattr(processes, "EVICTION_HOLD_S", 1.0)
    monkeypatch.setattr(processes, "EVICTION_HOLD_STEP_S", 0.05)
    return tmp_path / "node"


def test_no_notice_no_wait(node: Path) -> None:
    started = time.monotonic()
    assert why_not_start("s1") is None
    assert time.monotonic() - started < 0.5


def test_a_notice_that_outlives_the_hold_sends_the_run_back(node: Path) -> None:
    eviction_flag().write_text("1\n")
    started = time.monotonic()
    assert why_not_start("s2") == "evicted"
    assert time.monotonic() - started >= 1.0  # it held the worker's thread meanwhile


def test_a_notice_withdrawn_lets_the_run_start(node: Path) -> None:
    eviction_flag().write_text("1\n")
    threading.Timer(0.3, eviction_flag().unlink).start()
    assert why_not_start("s3") is None


def test_a_cancel_ends_the_hold(node: Path) -> None:
    eviction_flag().write_text("1\n")

    def cancel() -> None:
        with ACTIVE.lock:
            ACTIVE.cancelled.add("s4")

    threading.Timer(0.2, cancel).start()
    started = time.monotonic()
    assert why_not_start("s4") == "cancelled"
    assert time.monotonic() - started < 0.9
