"""The whole addprocs flow on the azure provider, through the emulator, with real Dask workers."""

from __future__ import annotations

import time

import distributed
import pytest

import azmanagers
from azmanagers.emulator import Emulator

pytestmark = pytest.mark.integration
DEADLINE_S = 90.0


def test_addprocs_on_azure_through_the_emulator(emulated_azure: Emulator) -> None:
    emulator = emulated_azure
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
