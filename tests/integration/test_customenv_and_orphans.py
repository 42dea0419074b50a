"""Custom environments shipped to workers, and no orphans when the caller dies or exits."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import distributed
import pytest

import azmanagers
from azmanagers.cli import main as azm
from tests.conftest import processes_under

pytestmark = pytest.mark.integration
PKG = "azm_tinypkg"


def build_wheel(folder: Path, value: str) -> Path:
    """Write a tiny pure-Python wheel by hand (no network, no build backend)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{PKG}-0.1.dist-info"
    files = {
        f"{PKG}/__init__.py": f"VALUE = {value!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 0.1\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: azm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record_lines = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record_lines.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record_lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record_lines) + "\n"
    wheel = folder / f"{PKG}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_customenv_builds_a_virtualenv_from_a_requirements_file(
    tmp_path: Path, azm_home: Path
) -> None:
    assert importlib.util.find_spec(PKG) is None  # the caller does not have it
    build_wheel(tmp_path / "wheels", "tiny-42")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {tmp_path / 'wheels'}\n{PKG}==0.1\n")
    cluster = azmanagers.addprocs(
        "local", 2, waitfor=True, timeout=180, customenv=str(requirements), join_timeout_s=180
    )
    client = distributed.default_client()

    def probe() -> tuple[str, str]:
        import azm_tinypkg  # type: ignore[import-not-found]

        return azm_tinypkg.VALUE, sys.prefix

    results = client.run(probe)
    assert {value for value, _ in results.values()} == {"tiny-42"}
    prefixes = {prefix for _, prefix in results.values()}
    assert len(prefixes) == 1
    env_dir = Path(prefixes.pop())
    assert env_dir.parent == azm_home / "state" / "local" / "agent" / "envs"
    logs = "\n".join(cluster.instance_logs().values())
    assert logs.count("building custom environment") == 1  # built once ...
    assert "reusing custom environment" in logs  # ... reused by the other instance
    # a later cluster with the same spec reuses it without building
    azmanagers.rmprocs()
    cluster = azmanagers.addprocs(
        "local", 1, waitfor=True, timeout=120, customenv=str(requirements)
    )
    assert "reusing custom environment" in "\n".join(cluster.instance_logs().values())


def test_customenv_bad_input() -> None:
    with pytest.raises(azmanagers.ConfigError, match="cannot read the requirements file"):
        azmanagers.addprocs("local", 1, customenv="/no/such/requirements.txt")
    with pytest.raises(azmanagers.ConfigError, match="customenv must be"):
        azmanagers.addprocs("local", 1, customenv=42)  # type: ignore[arg-type]


def test_customenv_that_cannot_install_fails_with_its_log(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {tmp_path}\nno-such-package-azm==9.9\n")
    with pytest.raises(azmanagers.InstanceFailedError, match="custom environment failed"):
        azmanagers.addprocs(
            "local", 1, waitfor=True, timeout=120, customenv=str(requirements), max_replacements=0
        )


CALLER = textwrap.dedent(
    """
    import sys, time, azmanagers
    cluster = azmanagers.addprocs("local", 2, waitfor=True, timeout=60, death_timeout_s=5)
    print(cluster.pool, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    """
)


def _run_caller(mode: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    pool = proc.stdout.readline().strip()
    assert pool.startswith("local-"), "the caller did not start its cluster"
    return proc, pool


def test_killed_caller_leaves_no_worker_and_gc_removes_its_state(
    tmp_path: Path, azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, pool = _run_caller("hang", tmp_path)
    try:
        assert len(processes_under(azm_home)) >= 2
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while processes_under(azm_home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_under(azm_home) == [], "workers outlived their scheduler"
        pool_dir = azm_home / "state" / "local" / "pools" / pool
        assert pool_dir.exists()  # the killed caller could not clean up ...
        capsys.readouterr()
        assert azm(["gc", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert pool in out and "owner process is gone" in out
        assert pool_dir.exists()
        assert azm(["gc"]) == 0  # ... azm gc does
        assert not pool_dir.exists()
        capsys.readouterr()
        assert azm(["gc", "--dry-run"]) == 0
        assert pool not in capsys.readouterr().out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_gc_leaves_a_live_callers_cluster_alone(azm_home: Path) -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    assert azmanagers.gc() == []
    assert cluster.nworkers() == 1


def test_interpreter_exit_removes_every_instance(tmp_path: Path, azm_home: Path) -> None:
    proc, pool = _run_caller("exit", tmp_path)
    assert proc.wait(timeout=60) == 0
    assert processes_under(azm_home) == []
    assert not (azm_home / "state" / "local" / "pools" / pool).exists()


def test_workers_of_a_frozen_caller_exit_after_the_death_timeout(
    tmp_path: Path, azm_home: Path
) -> None:
    proc, pool = _run_caller("hang", tmp_path)  # its workers have death_timeout_s=5
    try:
        assert len(processes_under(azm_home)) >= 2
        os.killpg(proc.pid, signal.SIGSTOP)  # connections stay open; nothing answers
        deadline = time.monotonic() + 45
        while processes_under(azm_home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert processes_under(azm_home) == [], "workers outlived an unresponsive scheduler"
        logs = list(
            (azm_home / "state" / "local" / "pools" / pool / "instances").glob("*/boot.log")
        )
        assert logs
        assert all("has not answered for" in log.read_text() for log in logs)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        azmanagers.gc()
