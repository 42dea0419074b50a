"""The ``azm`` command as a user runs it: demo, help on every command, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import processes_under

pytestmark = pytest.mark.integration
COMMANDS = [
    [],
    ["demo"],
    ["gc"],
    ["manifest"],
    ["manifest", "write"],
    ["manifest", "show"],
    ["template"],
    ["template", "list"],
    ["template", "show"],
    ["template", "add-scaleset"],
    ["template", "add-vm"],
    ["template", "add-nic"],
    ["template", "remove"],
    ["vm"],
    ["vm", "create"],
    ["vm", "list"],
    ["vm", "delete"],
    ["job"],
    ["job", "run"],
    ["job", "list"],
    ["job", "status"],
    ["job", "logs"],
    ["job", "wait"],
    ["job", "kill"],
    ["emulator"],
    ["emulator", "serve"],
]


def azm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "azmanagers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
        check=False,
    )


def test_azm_demo_runs_the_whole_story_and_leaves_nothing(azm_home: Path) -> None:
    result = azm("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "4 workers joined" in out
    assert "pi ~ 3.1" in out
    assert "worker log ->" in out and "hello from local-" in out
    assert "rmprocs(2): 2 workers left" in out
    assert "cluster closed; 0 instances left" in out
    assert "detached job" in out and "result 332833500" in out
    assert "stdout 'summing 1000 squares'" in out
    assert not list((azm_home / "state" / "local" / "vms").iterdir())
    assert out.count("local-") >= 4  # the table of workers
    assert processes_under(azm_home) == []
    assert not list((azm_home / "state" / "local" / "pools").iterdir())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "azm")
def test_every_command_has_help(command: list[str]) -> None:
    from azmanagers.cli import main

    assert main([*command, "--help"]) == 0


def test_errors_are_one_line_and_exit_non_zero() -> None:
    result = azm("template", "show", "no-such-template")
    assert result.returncode == 2  # a bad input, as a usage error
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "Traceback" not in result.stderr
    debug = azm("--debug", "template", "show", "no-such-template")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_json_output_is_json_for_scripts(azm_home: Path) -> None:
    for args in (["template", "list", "--json"], ["gc", "--dry-run", "--json"]):
        result = azm(*args, timeout=60)
        assert result.returncode == 0, result.stderr
        json.loads(result.stdout)
    listed = json.loads(azm("template", "list", "--json", timeout=60).stdout)
    assert {"kind": "scaleset", "name": "local"}.items() <= listed[0].items()
