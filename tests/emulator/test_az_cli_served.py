"""`azm emulator serve` as a user meets it: source its az-login.sh, then the real az CLI works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.emulator.test_az_cli import az_executable

pytestmark = pytest.mark.azcli


def serve_and_use(folder: Path, home: Path, group: str) -> tuple[str, str]:
    """Serve an emulator in ``folder``, create ``group`` and list groups with az through its
    az-login.sh; stop it. Return az's list and what serve printed."""
    script = folder / "az-login.sh"
    script.unlink(missing_ok=True)
    serve = ["emulator", "serve", "--no-run-instances", "--folder", str(folder)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", *serve],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not script.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        assert oct(script.stat().st_mode & 0o777) == "0o600"  # it holds the client secret
        shell = (
            f"set -e; export AZ={az_executable()}; source {script}; "
            f"az group create -n {group} -l southcentralus --output none; "
            'test -z "${REQUESTS_CA_BUNDLE:-}"; '  # nothing exported into the shell
            "az group list --output json"
        )
        done = subprocess.run(
            ["bash", "-c", shell],
            env={"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        return done.stdout, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_served_emulator_s_az_login_script_signs_the_az_cli_in(tmp_path: Path) -> None:
    folder = tmp_path / "served"
    home = tmp_path / "home"
    home.mkdir()
    listed, out = serve_and_use(folder, home, "served")
    assert [g["name"] for g in json.loads(listed)] == ["served"]
    # az kept its configuration in the emulator's folder, not in the user's ~/.azure
    assert (folder / "azure" / "azureProfile.json").exists()
    assert not (home / ".azure").exists()
    script = folder / "az-login.sh"
    assert "source " + str(script) in out
    secret_line = next(line for line in script.read_text().splitlines() if " -p " in line)
    secret = secret_line.split(" -p ", 1)[1].split()[0]
    assert secret not in out  # printed nowhere: only the 0600 script holds it
    # served again in the same folder (a new port, a new tenant): az follows
    listed, _ = serve_and_use(folder, home, "again")
    assert [g["name"] for g in json.loads(listed)] == ["again"]
