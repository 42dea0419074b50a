"""Which processes a local instance owns: gc stops ours and never an unrelated session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from azmanagers.cli import main as azm
from azmanagers.providers.gc import collect
from azmanagers.providers.local import procvm
from azmanagers.providers.local.provider import LocalProvider
from tests.unit.test_procvm import AGENT, DEAD_OWNER, all_running, gone, pid_file, spec, wait_states


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    path = tmp_path / "fake-python"
    path.write_text(AGENT)
    path.chmod(0o755)
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    made = LocalProvider()
    yield made
    made.wait_deleted()


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process nobody asked us to manage, leading a session of its own (as a login does)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def forge_instance(provider: LocalProvider, pool: str, pid: int, create_time: float) -> Path:
    """Write a stale instance record whose pid now belongs to someone else (a reused pid)."""
    folder = provider.root / "pools" / pool / "instances" / f"{pool}-0000"
    folder.mkdir(parents=True)
    record = {
        "id": f"{pool}-0000",
        "pid": pid,
        "create_time": create_time,
        "created_at": create_time,
        "deleting": False,
        "tags": {},
    }
    (folder / "instance.json").write_text(json.dumps(record))
    return folder


def test_gc_leaves_alone_a_session_whose_pid_a_stale_record_names(
    provider: LocalProvider, agent: Path, out: Path, stranger: subprocess.Popen[bytes]
) -> None:
    # Before the fix the stranger (sid == its pid, started after the record's create_time)
    # counted as the instance's session and was killed with killpg.
    provider.create_pool(spec("stale", agent, out, owner=DEAD_OWNER))
    started = psutil.Process(stranger.pid).create_time()
    forge_instance(provider, "stale", stranger.pid, started - 3600.0)  # before a reboot
    report = collect()
    assert [c.name for c in report.collected] == ["stale"], report
    time.sleep(0.5)
    assert stranger.poll() is None, "gc killed a process that was not ours"
    assert not (provider.root / "pools" / "stale").exists()


def test_stop_signals_only_a_leader_that_matches_the_record(
    stranger: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    started = psutil.Process(stranger.pid).create_time()
    stale = procvm.ProcessHandle(stranger.pid, started - 1.0)
    assert procvm.group_members(stale, tmp_path) == []
    procvm.stop(stale, instance_dir=tmp_path, grace_s=0.5)
    assert stranger.poll() is None
    matching = procvm.ProcessHandle(stranger.pid, started)
    assert [p.pid for p in procvm.group_members(matching)] == [stranger.pid]
    procvm.stop(matching, grace_s=2.0)
    assert stranger.wait(timeout=5) is not None


def test_gc_stops_every_instance_of_a_pool_with_one_unreadable_record(
    provider: LocalProvider, agent: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before the fix the corrupt record stopped delete_pool before any instance was stopped,
    # gc said "nothing was changed" (pool.json had been rewritten) and gave no file.
    provider.create_pool(spec("mixed", agent, out, cluster="c-mixed", owner=DEAD_OWNER))
    provider.scale_pool("mixed", 3)
    wait_states(provider, "mixed", all_running(3))
    pids = {i: pid_file(out, f"mixed-000{i}") for i in range(3)}
    children = {i: pid_file(out, f"mixed-000{i}", "child") for i in range(3)}
    broken = provider.root / "pools" / "mixed" / "instances" / "mixed-0001"
    (broken / "instance.json").write_text('{"id": "mixed-0001", "pid": ')

    capsys.readouterr()
    assert azm(["gc", "--dry-run", "--json"]) == 1  # the dry run predicts the failure
    preview = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in preview["not_collected"]] == [str(broken / "instance.json")]
    assert all(not gone(pid) for pid in pids.values())

    assert azm(["gc", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["collected"] == []
    [problem] = report["not_collected"]
    assert problem["file"] == str(broken / "instance.json")
    assert "nothing was changed" not in problem["error"]
    assert "stopped" in problem["error"] and str(broken) in problem["error"]
    for i in range(3):  # the unreadable one too: found by its AZMANAGERS_INSTANCE_DIR
        assert gone(pids[i]) and gone(children[i]), f"mixed-000{i} still runs"
    assert (broken / "instance.json").exists()  # what could not be read is kept to look at
    assert not (provider.root / "pools" / "mixed" / "instances" / "mixed-0000").exists()

    assert azm(["gc"]) == 1  # text: no "nothing to collect" when something was not collected
    captured = capsys.readouterr()
    assert "nothing to collect" not in captured.out
    assert str(broken / "instance.json") in captured.err


def test_the_exit_status_file_is_0600(tmp_path: Path) -> None:
    # Before: written by the shell with the umask's mode (0644).
    old = os.umask(0o022)
    try:
        proc = procvm.start(tmp_path / "vm", "exit 3\n", procvm.instance_environment(tmp_path, {}))
    finally:
        os.umask(old)
    assert proc.wait(timeout=30) == 3
    status = tmp_path / "vm" / procvm.EXIT_STATUS_NAME
    assert procvm.exit_status(tmp_path / "vm") == 3
    assert status.stat().st_mode & 0o777 == 0o600
