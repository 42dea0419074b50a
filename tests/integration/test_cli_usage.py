"""``azm`` as a shell user meets it: usage errors, and the emulator's env file sourced by bash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from azmanagers.cli import main

pytestmark = pytest.mark.integration
START_DEADLINE_S = 30.0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["template", "show"], "missing argument 'name'"),
        (["gc", "--bogus"], "no such option: --bogus"),
        (["template", "list", "--bogus"], "no such option: --bogus"),
    ],
)
def test_a_usage_error_prints_click_usage_and_exits_2(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: typer's own click was not the click imported here, so the usage error fell
    # through to "Error: MissingParameter: ..." with exit code 1.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: azm ") and f"Try 'azm {args[0]}" in err, err
    assert says in err.lower()
    assert "MissingParameter" not in err and "NoSuchOption" not in err


def test_an_option_without_its_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "list", "--kind"]) == 2
    err = capsys.readouterr().err
    assert "Error: Option '--kind' requires an argument." in err and "BadOption" not in err


def test_a_usage_error_from_the_installed_command(azm_home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "azmanagers", "template", "show"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Usage: azm template show" in result.stderr
    assert "missing argument 'name'" in result.stderr.lower()
    assert "Error: MissingParameter" not in result.stderr


def test_emulator_serve_refuses_an_empty_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: '' became Path('.') and the emulator wrote its CA and token file in the cwd.
    monkeypatch.chdir(tmp_path)
    assert main(["emulator", "serve", "--folder", ""]) == 2  # a bad input
    err = capsys.readouterr().err
    assert "Error: --folder" in err and "empty" in err
    assert list(tmp_path.iterdir()) == []


def test_emulator_env_is_safe_to_source_from_any_folder(tmp_path: Path) -> None:
    # Before: `export K=V` unquoted: the folder's ';' ran `touch` and its space split the value.
    folder = tmp_path / "emu dir;touch PWNED"
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", "emulator", "serve", "--folder", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        env_file = folder / "emulator.env"
        deadline = time.monotonic() + START_DEADLINE_S
        while not env_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        sourced = subprocess.run(
            ["bash", "-c", 'source "$1" && printf "%s" "$AZMANAGERS_ARM_CA"', "-", str(env_file)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
            check=False,
        )
        assert sourced.returncode == 0, sourced.stderr
        assert sourced.stdout == str(folder / "emulator-ca.pem")
        assert not (tmp_path / "PWNED").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
