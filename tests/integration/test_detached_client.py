"""The caller's side of detached jobs: checks before sending, following output, the CLI."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import azmanagers
from azmanagers.detached.job import DetachedJob
from azmanagers.detached.vms import DetachedVM, save_vm
from azmanagers.errors import ConfigError
from azmanagers.tls import fingerprint, make_self_signed
from tests.detached_fixtures import DEADLINE_S, Service, running_service

pytestmark = pytest.mark.integration


@pytest.fixture
def recorded(tmp_path: Path, azm_home: Path) -> Iterator[tuple[Service, DetachedVM]]:
    """A running service, recorded as the detached VM ``test-vm`` (as ``vm create`` would)."""
    (tmp_path / "vm").mkdir()
    with running_service(tmp_path / "vm") as svc:
        address = svc.address
        vm = save_vm(
            DetachedVM(
                name=address.name,
                template="local",
                provider="local",
                host=address.host,
                port=address.port,
                cert=address.cert,
                fingerprint=address.fingerprint,
                token=address.token,
            )
        )
        yield svc, vm


def _nowhere() -> DetachedVM:
    """A VM record whose service is not there: whatever reaches the network fails."""
    pair = make_self_signed("azmanagers detached nowhere")
    return DetachedVM(
        name="nowhere",
        template="local",
        provider="local",
        host="127.0.0.1",
        port=9,
        cert=pair.cert,
        fingerprint=fingerprint(pair.cert),
        token="t",
    )


def test_the_size_check_counts_the_bytes_that_would_be_sent() -> None:
    code = "#" + "\x01" * (11 * 2**20)  # 11 M characters, each sent as \u0001: 66 MiB
    with pytest.raises(ConfigError, match=r"the job is 66 MiB; a detached job takes at most 64"):
        azmanagers.detachat(_nowhere(), code)
    with pytest.raises(ConfigError, match=r"the job is 66 MiB"):
        azmanagers.detachat(_nowhere(), "print(1)", env={"BIG": "\x01" * (11 * 2**20)})


@pytest.mark.parametrize("key", ["AZMANAGERS_INSTANCE_DIR", "AZMANAGERS_JOB_ID", "azmanagers_x"])
def test_a_job_may_not_set_azmanagers_variables(key: str) -> None:
    with pytest.raises(ConfigError, match=f"may not set {key}: variables starting with"):
        azmanagers.detachat(_nowhere(), "print(1)", env={key: "/tmp"})


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -5.0, 0.0])
def test_a_wait_needs_a_finite_positive_timeout(timeout: float) -> None:
    job = DetachedJob(_nowhere(), "0123456789abcdef")
    with pytest.raises(ConfigError, match="timeout must be a finite number of seconds > 0"):
        job.wait(timeout)
    with pytest.raises(ConfigError, match="timeout must be a finite number of seconds > 0"):
        job.result(timeout)


def test_following_output_keeps_characters_split_across_reads(
    recorded: tuple[Service, DetachedVM], capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    _, vm = recorded
    code = (
        "import sys, time\n"
        "data = 'a\u20ac\u00e9'.encode()\n"
        "for i in range(len(data)):\n"  # one byte at a time: every character split
        "    sys.stdout.buffer.write(data[i:i + 1]); sys.stdout.flush(); time.sleep(0.3)\n"
        "print()\n"
    )
    job = azmanagers.detachat(vm, code)
    assert "".join(job.follow(poll_s=0.05)) == "a\u20ac\u00e9\n"
    capsys.readouterr()
    assert main(["job", "logs", job.id, "--vm", vm.name, "--follow"]) == 0
    assert capsys.readouterr().out == "a\u20ac\u00e9\n"


def test_the_job_commands_take_any_file_name_and_refuse_bad_input_clearly(
    recorded: tuple[Service, DetachedVM], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    _, vm = recorded
    long_name = tmp_path / ("x" * 245 + ".py")  # the user gave no job name: it is cut
    long_name.write_text("print('long')\n")
    capsys.readouterr()
    assert main(["job", "run", str(long_name), "--vm", vm.name, "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert len(started["name"]) == 200 and started["name"].startswith("xxx")
    assert started["name"].endswith("...")
    if sys.platform != "darwin":  # macOS refuses such file names
        odd = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xff.py"))
        odd.write_text("print('odd')\n")
        assert main(["job", "run", str(odd), "--vm", vm.name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == "bad\ufffd.py"
    assert main(["job", "run", str(long_name), "--vm", vm.name, "--env", "K=\udcff"]) == 2
    err = capsys.readouterr().err
    assert "--env K" in err and "not UTF-8" in err and "base64" not in err
    assert main(["job", "run", str(long_name), "--vm", vm.name, "--env", "AZMANAGERS_X=1"]) == 2
    assert "AZMANAGERS_X" in capsys.readouterr().err
    assert main(["job", "wait", started["id"], "--vm", vm.name, "--timeout", "60"]) == 0
    for bad in ("nan", "-5", "0", "inf"):
        capsys.readouterr()
        assert main(["job", "wait", started["id"], "--vm", vm.name, "--timeout", bad]) == 2
        assert "--timeout must be a finite number of seconds > 0" in capsys.readouterr().err
    jobs = azmanagers.detached.list_jobs(vm)
    assert len(jobs) == (2 if sys.platform != "darwin" else 1)
    for job in jobs:
        assert DetachedJob(vm, job["id"]).wait(DEADLINE_S) == "succeeded"
