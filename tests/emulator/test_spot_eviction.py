"""Spot VMs through the emulator: an eviction mid-computation loses no result."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import distributed
import pytest

import azmanagers
from azmanagers.emulator import Emulator

pytestmark = pytest.mark.integration
DEADLINE_S = 90.0


def eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_evicted_spot_worker_retires_gracefully_and_is_replaced(
    emulated_azure: Emulator, tmp_path: Path
) -> None:
    cluster = azmanagers.addprocs("myscaleset", 2, waitfor=True, timeout=DEADLINE_S, spot=True)
    (scaleset,) = emulated_azure.state.scalesets.values()
    profile = scaleset.body["properties"]["virtualMachineProfile"]
    assert profile["priority"] == "Spot" and profile["evictionPolicy"] == "Delete"
    client = distributed.default_client()

    def slow_square(i: int) -> int:
        time.sleep(0.3)
        return i * i

    futures = client.map(slow_square, range(30), pure=False)
    eventually(lambda: sum(f.done() for f in futures) >= 4, "some results to be held")
    victim = sorted(azmanagers.workers())[0]
    emulated_azure.state.evict([victim], notice_s=6)
    assert client.gather(futures) == [i * i for i in range(30)]  # complete and correct
    (vm_folder,) = (tmp_path / "emulator" / "vms").glob(f"{victim}-*")  # its name, its vmId
    boot_log = vm_folder / "boot.log"
    eventually(lambda: "retired gracefully" in boot_log.read_text(), "a graceful retirement")
    eventually(lambda: victim not in {vm.name for vm in scaleset.vms.values()}, "the eviction")
    eventually(
        lambda: cluster.nworkers() == 2 and victim not in azmanagers.workers(),
        "a replacement for the evicted worker",
    )
    assert cluster.evicted == [victim]
    assert list(cluster.failures) == []


def test_without_replace_evicted_the_cluster_shrinks(emulated_azure: Emulator) -> None:
    cluster = azmanagers.addprocs(
        "myscaleset", 2, waitfor=True, timeout=DEADLINE_S, spot=True, replace_evicted=False
    )
    victim = sorted(azmanagers.workers())[0]
    emulated_azure.state.evict([victim], notice_s=2)
    eventually(lambda: cluster.evicted == [victim], "the eviction to be seen")
    assert cluster.target == 1
    cycles = cluster.reconcile_cycles
    eventually(lambda: cluster.reconcile_cycles >= cycles + 3, "three more reconcile cycles")
    assert cluster.nworkers_provisioned() == 1
