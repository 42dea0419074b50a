"""Detached VMs and jobs on the local provider, end to end: addproc, detachat, attach, rmproc."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import azmanagers
from azmanagers import DetachedJob, JobFailedError
from azmanagers.detached.vms import records_dir

pytestmark = pytest.mark.integration
DEADLINE_S = 60.0


def test_a_function_runs_on_a_local_vm_and_another_process_attaches(azm_home: Path) -> None:
    def _train(path: str, epochs: int = 1) -> dict[str, object]:  # local: pickled by value
        import time as _time

        for epoch in range(epochs):
            print(f"epoch {epoch}", flush=True)
            _time.sleep(0.2)
        return {"path": path, "epochs": epochs, "table": azmanagers.variablebundle("table")}

    vm = azmanagers.addproc("local", name="trainer")
    try:
        record = records_dir() / "trainer.json"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert vm.token not in repr(vm) and vm.ping()
        azmanagers.variablebundle(table=[1, 2, 3])
        job = azmanagers.detachat(vm, _train, "/data", epochs=3)
        assert job.status() in ("queued", "running", "succeeded")
        assert job.result(timeout=DEADLINE_S) == {"path": "/data", "epochs": 3, "table": [1, 2, 3]}
        assert job.read() == "epoch 0\nepoch 1\nepoch 2\n"
        assert job.read(stdio="stderr") == ""

        # later, another process (same user, same AZMANAGERS_HOME) picks the job up
        script = textwrap.dedent(
            f"""
            from azmanagers import DetachedJob
            job = DetachedJob.attach("trainer", "{job.id}")
            print(job.status(), job.result()["epochs"])
            """
        )
        env = {**os.environ, "AZMANAGERS_HOME": str(azm_home)}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == "succeeded 3", out.stderr
    finally:
        azmanagers.rmproc(vm)
    assert not (records_dir() / "trainer.json").exists()
    with pytest.raises(azmanagers.ConfigError, match="no detached VM named 'trainer'"):
        DetachedJob.attach("trainer", job.id)


def test_code_strings_failures_tailing_and_kill(azm_home: Path) -> None:
    vm = azmanagers.addproc()
    try:
        failing = azmanagers.detachat(vm, "x = 1\nraise RuntimeError('bad input: x=%d' % x)\n")
        with pytest.raises(JobFailedError, match=r"builtins.RuntimeError: bad input: x=1") as info:
            failing.result(timeout=DEADLINE_S)
        assert "raise RuntimeError" in info.value.remote_traceback

        env_job = azmanagers.detachat(
            vm, "import os\nprint(os.environ['GREETING'])\n", env={"GREETING": "hello"}
        )
        assert env_job.result(timeout=DEADLINE_S) is None
        assert env_job.read() == "hello\n"

        code = "import time\nfor i in range(600):\n    print(i, flush=True)\n    time.sleep(0.1)\n"
        long = azmanagers.detachat(vm, code)
        deadline = time.monotonic() + DEADLINE_S
        while "3\n" not in long.read():
            assert time.monotonic() < deadline, "no output while the job runs"
            time.sleep(0.1)
        with pytest.raises(azmanagers.WaitTimeoutError, match="still running"):
            long.wait(timeout=0.5)
        assert long.kill() == "killed"
        with pytest.raises(JobFailedError, match="killed"):
            long.result()
        statuses = [j["status"] for j in azmanagers.detached.list_jobs(vm)]
        assert statuses == ["failed", "succeeded", "killed"]
    finally:
        azmanagers.rmproc(vm)


def test_a_detached_function_that_does_not_persist_deletes_its_vm(azm_home: Path) -> None:
    @azmanagers.detach("local", persist=False, env={"AZMANAGERS_SELF_DELETE_GRACE_S": "1"})
    def nightly(n: int) -> int:
        return n * 2

    job = nightly(21)
    assert job.result(timeout=DEADLINE_S) == 42
    folder = azm_home / "state" / "local" / "vms" / job.vm.name
    deadline = time.monotonic() + DEADLINE_S
    while folder.exists():
        assert time.monotonic() < deadline, "the VM did not delete itself"
        time.sleep(0.2)
    assert not job.vm.ping()
    azmanagers.rmproc(job.vm)  # forgetting a VM that deleted itself is fine


def test_the_vm_and_job_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from azmanagers.cli import main

    assert main(["vm", "create", "--name", "clivm"]) == 0
    try:
        script = tmp_path / "job.py"
        script.write_text("import os\nprint('value', os.environ['K'])\n")
        capsys.readouterr()
        assert main(["job", "run", str(script), "--vm", "clivm", "--env", "K=42"]) == 0
        job_id = capsys.readouterr().out.strip()
        assert main(["job", "wait", job_id, "--vm", "clivm", "--timeout", "60"]) == 0
        assert main(["job", "logs", job_id, "--vm", "clivm"]) == 0
        assert capsys.readouterr().out.endswith("value 42\n")
        assert main(["job", "list", "--vm", "clivm"]) == 0
        assert f"{job_id}  succeeded" in capsys.readouterr().out
        assert main(["job", "run", str(script), "--vm", "clivm", "--env", "novalue"]) == 2
        assert "--env takes KEY=VALUE" in capsys.readouterr().err
        assert main(["job", "status", "0123456789abcdef", "--vm", "clivm"]) == 1
        assert "no job" in capsys.readouterr().err
        assert main(["vm", "list"]) == 0
        assert "clivm" in capsys.readouterr().out
    finally:
        _check_json_commands(tmp_path, capsys)
        assert main(["vm", "delete", "clivm"]) == 0
    assert main(["job", "list", "--vm", "clivm"]) == 2
    assert "no detached VM named 'clivm'" in capsys.readouterr().err


def test_a_vm_whose_service_never_starts_fails_with_its_boot_log(azm_home: Path) -> None:
    with pytest.raises(azmanagers.DetachedServiceError, match="stopped before its detached"):
        azmanagers.addproc(name="broken", env={"AZMANAGERS_PYTHON": "/nonexistent/python3"})
    assert "broken" in [r.stem for r in records_dir().glob("*.json")]  # kept: rmproc cleans up
    azmanagers.rmproc("broken")
    assert not (azm_home / "state" / "local" / "vms" / "broken").exists()


def _check_json_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` on the VM and job commands: JSON a script can parse, never the token."""
    from azmanagers.cli import main
    from azmanagers.detached.vms import load_vm

    capsys.readouterr()
    assert main(["vm", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["problems"] == []
    assert [(v["name"], v["status"], v["answers"]) for v in listed["vms"]] == [
        ("clivm", "up", True)
    ]
    token = load_vm("clivm").token
    script = tmp_path / "json-job.py"
    script.write_text("print('from json')\n")
    assert main(["job", "run", str(script), "--vm", "clivm", "--json"]) == 0
    out = capsys.readouterr().out
    started = json.loads(out)
    assert started["name"] == "json-job.py" and started["status"] in ("queued", "running")
    assert main(["job", "wait", started["id"], "--vm", "clivm", "--timeout", "60"]) == 0
    capsys.readouterr()
    assert main(["job", "status", started["id"], "--vm", "clivm", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "succeeded" and status["exit_code"] == 0
    assert main(["job", "list", "--vm", "clivm", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert started["id"] in [j["id"] for j in jobs] and len(jobs) == 2
    assert all(token not in text for text in (out, json.dumps(listed), json.dumps(jobs)))


def test_vm_create_json_and_names_that_cannot_be_a_vm_name(
    azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    for name in ("v" * 300, "v" * 44, "vm1\n"):
        assert main(["vm", "create", "--name", name]) == 2
        assert "detached VM name" in capsys.readouterr().err
    assert not (azm_home / "state" / "local" / "vms").exists()  # refused before anything
    assert main(["vm", "create", "--name", "jsonvm", "--json"]) == 0
    try:
        created = json.loads(capsys.readouterr().out)
        assert created["name"] == "jsonvm" and created["status"] == "up"
        assert created["answers"] is True and "token" not in created
        from azmanagers.detached.vms import load_vm

        assert load_vm("jsonvm").token not in json.dumps(created)
    finally:
        assert main(["vm", "delete", "jsonvm"]) == 0


def test_the_boot_log_is_private_and_never_holds_a_query_string(azm_home: Path) -> None:
    vm = azmanagers.addproc(name="logged")
    try:
        vm.client().request("GET", "/v1/ping", query={"token": "query-secret-1"})
        with pytest.raises(azmanagers.JobNotFoundError):
            vm.client().request("GET", "/v1/jobs/0123456789abcdef", query={"t": "query-secret-2"})
        boot_log = azm_home / "state" / "local" / "vms" / "logged" / "boot.log"
        deadline = time.monotonic() + DEADLINE_S
        while "/v1/jobs/0123456789abcdef" not in boot_log.read_text():
            assert time.monotonic() < deadline, boot_log.read_text()
            time.sleep(0.05)
        text = boot_log.read_text()
        assert "query-secret" not in text and vm.token not in text
        assert "GET /v1/ping" in text
        assert stat.S_IMODE(boot_log.stat().st_mode) == 0o600
    finally:
        azmanagers.rmproc(vm)


def test_lone_surrogates_are_refused_before_sending_and_leave_no_job(azm_home: Path) -> None:
    vm = azmanagers.addproc(name="surrogates")
    try:
        for kwargs in (
            {"function_or_code": "print(1)  # \ud800"},
            {"function_or_code": "print(1)", "job_name": "job \udfff"},
            {"function_or_code": "print(1)", "env": {"K\ud800": "v"}},
            {"function_or_code": "print(1)", "env": {"K": "\ud800"}},
        ):
            with pytest.raises(azmanagers.ConfigError, match="lone surrogate"):
                azmanagers.detachat(vm, **kwargs)  # type: ignore[arg-type]
        assert azmanagers.detached.list_jobs(vm) == []
        assert azmanagers.detachat(vm, "print('ok')").result(timeout=DEADLINE_S) is None
    finally:
        azmanagers.rmproc(vm)
