"""A caller killed mid-cluster on the azure provider: azm gc finds its scale set by tag."""

from __future__ import annotations

import json
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


BOTH = textwrap.dedent(
    """
    import time, azmanagers
    on_azure = azmanagers.addprocs("myscaleset", 1, waitfor=True, timeout=90, death_timeout_s=5)
    on_local = azmanagers.addprocs("local", 1, waitfor=True, timeout=90, death_timeout_s=5)
    print(on_azure.pool, on_local.pool, flush=True)
    time.sleep(600)
    """
)


def test_gc_collects_every_orphan_and_reports_each_unreadable_file(
    emulated_azure: Emulator, tmp_path: Path, azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "caller.py"
    script.write_text(BOTH)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        azure_pool, local_pool = proc.stdout.readline().split()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # Three broken config and state files: before the fix any one of them stopped gc.
        templates = azm_home / "templates_scaleset.json"
        data = json.loads(templates.read_text())
        data["broken"] = 5  # a template that is not an object
        templates.write_text(json.dumps(data))
        manifest = azm_home / "manifest.json"
        manifest.write_bytes(b'{"resourcegroup": "caf\xe9"}')  # not UTF-8
        corrupt = azm_home / "state" / "local" / "pools" / "broken-0a1b2c" / "pool.json"
        corrupt.parent.mkdir(parents=True)
        corrupt.write_text('{"name": ')
        local_dir = azm_home / "state" / "local" / "pools" / local_pool
        assert local_dir.exists() and emulated_azure.state.scalesets

        capsys.readouterr()
        assert azm(["gc", "--dry-run", "--json"]) == 1  # something could not be collected
        report = json.loads(capsys.readouterr().out)
        found = {(item["provider"], item["name"]) for item in report["collected"]}
        assert found == {("azure", azure_pool), ("local", local_pool)}
        problems = " | ".join(
            f"{p['what']} {p['file']}: {p['error']}" for p in report["not_collected"]
        )
        for path in (templates, manifest, corrupt):
            assert str(path) in problems, problems
        assert "'broken'" in problems and "not UTF-8" in problems
        assert local_dir.exists() and emulated_azure.state.scalesets  # a dry run deletes nothing

        assert azm(["gc"]) == 1
        captured = capsys.readouterr()
        assert f"deleted local pool {local_pool}" in captured.out
        assert f"deleted azure scaleset {azure_pool}" in captured.out
        assert str(corrupt) in captured.err and str(manifest) in captured.err
        assert not local_dir.exists()
        deadline = time.monotonic() + 30
        while emulated_azure.state.scalesets and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emulated_azure.state.scalesets == {}
        assert corrupt.read_text() == '{"name": '  # what could not be read is left as it was
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_gc_skips_unusable_templates_and_resource_groups_that_do_not_exist(
    emulated_azure: Emulator, azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: gc called ARM with subscriptionid "not-a-guid", and a resource group that does
    # not exist was reported as an error (a 404) instead of a place with nothing in it.
    templates = azm_home / "templates_scaleset.json"
    data = json.loads(templates.read_text())
    bad_sub = {**data["myscaleset"], "subscriptionid": "not-a-guid"}
    bad_group = {**data["myscaleset"], "resourcegroup": "rg\n;x"}
    missing = {**data["myscaleset"], "resourcegroup": "no-such-group"}
    data.update({"bad-sub": bad_sub, "bad-group": bad_group, "missing": missing})
    templates.write_text(json.dumps(data))
    capsys.readouterr()
    assert azm(["gc", "--dry-run", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = {p["what"]: p for p in report["not_collected"]}
    assert set(problems) == {"scale-set template 'bad-sub'", "scale-set template 'bad-group'"}
    for problem in problems.values():
        assert problem["file"] == str(templates)
    assert "not-a-guid" in problems["scale-set template 'bad-sub'"]["error"]
    assert "resourcegroup" in problems["scale-set template 'bad-group'"]["error"]
    called = [c.path for c in emulated_azure.server.calls]
    assert not any("not-a-guid" in path or "%3Bx" in path or ";x" in path for path in called)
    assert any("no-such-group" in path for path in called)  # looked there: nothing to collect
