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


def test_the_served_emulator_s_az_login_script_signs_the_az_cli_in(tmp_path: Path) -> None:
    az = az_executable()
    folder = tmp_path / "served"
    home = tmp_path / "home"
    home.mkdir()
    serve = ["emulator", "serve", "--no-run-instances", "--folder", str(folder)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", *serve],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        script = folder / "az-login.sh"
        deadline = time.monotonic() + 30
        while not script.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        assert oct(script.stat().st_mode & 0o777) == "0o600"  # it holds the client secret
        shell = (
            f"set -e; export AZ={az}; source {script}; "
            "az group create -n served -l southcentralus --output none; "
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
        assert [g["name"] for g in json.loads(done.stdout)] == ["served"]
        # az kept its configuration in the emulator's folder, not in the user's ~/.azure
        assert (folder / "azure" / "azureProfile.json").exists()
        assert not (home / ".azure").exists()
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert "source " + str(script) in out
        secret_line = next(line for line in script.read_text().splitlines() if " -p " in line)
        secret = secret_line.split(" -p ", 1)[1].split()[0]
        assert secret not in out  # printed nowhere: only the 0600 script holds it
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
