"""Emulated VMs' workers listen on their NIC's (loopback) address, as a VM listens on its own."""

from __future__ import annotations

import distributed
import pytest

import azmanagers
from azmanagers.emulator import Emulator

pytestmark = pytest.mark.integration


def test_each_emulated_workers_address_is_its_vms_nic_address(emulated_azure: Emulator) -> None:
    runner = emulated_azure.state.runner
    assert runner is not None
    azmanagers.addprocs("myscaleset", 2, waitfor=True, timeout=90)
    try:
        client = distributed.default_client()
        workers = client.scheduler_info()["workers"]
        hosts = {a.rsplit("://", 1)[-1].rsplit(":", 1)[0]: w["name"] for a, w in workers.items()}
        nics = {identity.name: identity.address for identity in runner.identities.values()}
        assert len(hosts) == 2 and "127.0.0.1" not in hosts, hosts
        assert {nics[name] for name in hosts.values()} == set(hosts), (hosts, nics)
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    finally:
        azmanagers.rmprocs()
