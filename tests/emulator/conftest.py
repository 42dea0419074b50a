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
