"""dask-cloudprovider's AzureVMCluster through the emulator: made, used, closed, nothing left.

It runs in a venv of its own with the Azure SDKs it works with (see ``azure_vm_cluster``); its
VMs boot the emulated stock image, whose ``docker`` runs the scheduler and the workers with this
machine's Python.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from azmanagers.emulator import Emulator, start_emulator
from tests.conftest import eventually, processes_under
from tests.emulator.azure_vm_cluster import prepare_network, run_cluster, venv_python


@pytest.fixture(scope="module")
def python() -> str:
    """The python of dask-cloudprovider's venv (installed from PyPI the first time: .ci/run
    does it); without it, skipped, unless CI is set (then failed)."""
    try:
        return venv_python()
    except RuntimeError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{exc} (CI is set: this test must run there)")
        pytest.skip(f"dask-cloudprovider's venv is not there and could not be made: {exc}")


def everything(emu: Emulator) -> list[dict[str, Any]]:
    with emu.state.lock:
        return [
            *(vm["body"] for vm in emu.state.vms.values()),
            *emu.state.nics.values(),
            *emu.state.others.values(),
        ]


def test_azure_vm_cluster_is_made_used_and_closed_leaving_nothing(
    python: str, tmp_path: Path
) -> None:
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    try:
        prepare_network(emu)
        start = len(emu.server.calls)
        result = run_cluster(emu, python, n_workers=1)
        assert (result["workers"], result["value"]) == (1, 6)
        calls = emu.server.calls[start:]
        assert [c for c in calls if c.status >= 400] == [], "a call dask-cloudprovider made failed"
        made = {(c.method, c.path.rsplit("/providers/", 1)[-1].split("/")[1]) for c in calls}
        for expected in (
            ("GET", "virtualNetworks"),  # its subnet
            ("GET", "networkSecurityGroups"),
            ("PUT", "publicIPAddresses"),
            ("PUT", "networkInterfaces"),
            ("PUT", "virtualMachines"),
            ("DELETE", "virtualMachines"),
            ("GET", "disks"),
            ("DELETE", "disks"),
            ("DELETE", "networkInterfaces"),
            ("DELETE", "publicIPAddresses"),
        ):
            assert expected in made

        # reached at its public IP, which is its VM's one (loopback) address, as its private IP
        scheduler_address = result["scheduler_address"]
        assert scheduler_address.startswith("tls://127.")
        [scheduler] = [
            p for p in (tmp_path / "emulator" / "vms").iterdir() if "scheduler" in p.name
        ]
        log = (scheduler / "boot.log").read_text()
        assert "running 'modules:final'" in log  # its cloud-init ran ...
        assert "docker (emulated): daskdev/dask:latest runs env" in log  # ... and its runcmd
        # the scheduler listened on an address of this emulator's VMs (its own prefix)
        assert scheduler_address.startswith(f"tls://{emu.state.addresses.prefix}."), log[-3000:]
        runcmd = scheduler / "root" / "var/lib/cloud/instance/scripts/runcmd"
        assert "docker run --net=host" in runcmd.read_text()

        left = [r["id"] for r in everything(emu) if (r.get("tags") or {}).get("creator")]
        assert left == [], "dask-cloudprovider left these behind"
        assert sorted(r["name"] for r in everything(emu)) == ["dask-nsg", "dask-vnet"]
        eventually(
            lambda: processes_under(tmp_path / "emulator" / "vms") == [],
            "the cluster's VMs to stop",
            30,
        )
    finally:
        emu.stop()
