"""The whole addprocs flow on the azure provider, through the emulator, with real Dask workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import distributed
import pytest

import azmanagers
from azmanagers import api
from azmanagers.emulator import Emulator, start_emulator
from azmanagers.providers.azure._clients import ArmSettings, resource_client
from tests.conftest import processes_under

pytestmark = pytest.mark.integration
SUB = "00000000-0000-0000-0000-0000000000bb"
RG = "azm-emulated"
DEADLINE_S = 90.0


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    for key, value in emu.environment().items():
        monkeypatch.setenv(key, value)
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": "southcentralus"}
    )
    azmanagers.save_template_scaleset(
        "myscaleset",
        azmanagers.build_sstemplate(
            "myscaleset",
            subscriptionid=SUB,
            admin_username="azuser",
            location="southcentralus",
            resourcegroup=RG,
            vnet="vnet",
            subnet="subnet",
            imagegallery="gallery",
            imagename="image",
            skuname="Standard_D2s_v3",
        ),
    )
    try:
        yield emu
    finally:
        for template in list(api.clusters()):
            azmanagers.rmprocs(template=template)
        emu.stop()
    assert processes_under(tmp_path / "emulator") == [], "emulated VMs outlived the emulator"


def test_addprocs_on_azure_through_the_emulator(emulator: Emulator) -> None:
    cluster = azmanagers.addprocs("myscaleset", 2, waitfor=True, timeout=DEADLINE_S)
    names = azmanagers.workers()
    assert sorted(names) == [f"{cluster.pool}_0", f"{cluster.pool}_1"]  # named by IMDS
    client = distributed.default_client()
    assert sum(client.gather(client.map(pow, range(6), [2] * 6))) == 55

    azmanagers.addprocs("myscaleset", 1, waitfor=True, timeout=DEADLINE_S)
    assert azmanagers.nworkers() == 3
    azmanagers.rmprocs(1)
    assert azmanagers.nworkers() == 2
    # scaling never re-PUT the whole template: one PUT (the create), then PATCHes
    assert len(emulator.server.calls_matching("PUT", "/virtualMachineScaleSets/")) == 1
    assert emulator.server.calls_matching("PATCH", "/virtualMachineScaleSets/")
    assert emulator.server.calls_matching("POST", f"/{cluster.pool}/delete")

    pool = cluster.pool
    azmanagers.rmprocs()
    deadline = time.monotonic() + 30
    while emulator.state.scalesets and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not emulator.state.scalesets, "close left the scale set behind"
    assert pool not in {k[2] for k in emulator.state.scalesets}
