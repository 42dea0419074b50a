"""Fixtures for the azure provider's tests: the emulator, with or without process-VMs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import azmanagers
from azmanagers.cluster import api
from azmanagers.emulator import Emulator, sample_scaleset_template, start_emulator
from azmanagers.providers.azure._clients import ArmSettings, resource_client
from tests.conftest import processes_under

SUB = "00000000-0000-0000-0000-0000000000bb"
RG = "azm-emulated"


@pytest.fixture
def emulated_azure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    """An emulator whose VMs run their custom data, the ARM variables set, and a saved
    scale-set template ``myscaleset``; every cluster and VM is gone afterwards."""
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    for key, value in emu.environment().items():
        monkeypatch.setenv(key, value)
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": "southcentralus"}
    )
    azmanagers.save_template_scaleset(
        "myscaleset",
        sample_scaleset_template("myscaleset", SUB, RG),
    )
    try:
        yield emu
    finally:
        for template in list(api.clusters()):
            azmanagers.rmprocs(template=template)
        emu.stop()
    assert processes_under(tmp_path / "emulator") == [], "emulated VMs outlived the emulator"


def save_vm_templates(
    name: str = "myvm", *, nic: str = "mynic", managed_identity: bool = False
) -> None:
    """Save a VM template ``name`` and a NIC template ``nic`` in the emulated group."""
    vm = azmanagers.build_vmtemplate(
        name,
        subscriptionid=SUB,
        admin_username="azuser",
        location="southcentralus",
        resourcegroup=RG,
        imagegallery="gallery",
        imagename="image",
        vmsize="Standard_D4s_v3",
        managed_identity=managed_identity,
    )
    azmanagers.save_template_vm(name, vm)
    nic_template = azmanagers.build_nictemplate(
        nic,
        subscriptionid=SUB,
        resourcegroup_vnet=RG,
        vnet="vnet",
        subnet="subnet",
        location="southcentralus",
    )
    azmanagers.save_template_nic(nic, nic_template)
