"""A stock image: VMs without azmanagers install the caller's version at boot, then join."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import distributed
import pytest

import azmanagers
from azmanagers.emulator import Emulator, sample_scaleset_template
from tests.emulator.conftest import RG, SUB

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 180.0
STOCK_IMAGE = "Canonical:ubuntu-24_04-lts:server:latest"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding this checkout's azmanagers wheel (what an index would serve)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(folder),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    assert list(folder.glob("azmanagers-*.whl"))
    return folder


def test_a_stock_image_installs_azmanagers_then_joins(
    emulated_azure: Emulator, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    azmanagers.save_template_scaleset(
        "stock", sample_scaleset_template("stock", SUB, RG, image=STOCK_IMAGE)
    )
    monkeypatch.setenv("AZMANAGERS_BOOTSTRAP_PIP_ARGS", f"--no-index --find-links '{wheelhouse}'")
    cluster = azmanagers.addprocs("stock", 1, waitfor=True, timeout=DEADLINE_S)
    client = distributed.default_client()
    (python,) = client.run(getattr, sys, "executable").values()
    assert f"venv-{azmanagers.__version__}" in python, "the agent did not run from the virtualenv"
    assert python != sys.executable
    assert sum(client.gather(client.map(abs, [-1, -2, 3]))) == 6
    runner = emulated_azure.state.runner
    assert runner is not None
    (vm_id,) = [k for k, vm in runner.identities.items() if vm.name == f"{cluster.pool}_0"]
    log = runner.boot_log(vm_id, 20_000)
    assert f"lacks azmanagers {azmanagers.__version__}; installing it" in log


def test_a_failed_install_is_reported_with_the_boot_log(
    emulated_azure: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    azmanagers.save_template_scaleset(
        "stock", sample_scaleset_template("stock", SUB, RG, image=STOCK_IMAGE)
    )
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("AZMANAGERS_BOOTSTRAP_PIP_ARGS", f"--no-index --find-links '{empty}'")
    with pytest.raises(azmanagers.InstanceFailedError) as info:
        azmanagers.addprocs("stock", 1, waitfor=True, timeout=DEADLINE_S, max_replacements=0)
    message = str(info.value)
    assert "pip could not install azmanagers" in message
    assert "bootstrap_pip_args" in message
