"""Process-VMs on loopback addresses of their own, and what the guard and the agent make of them."""

from __future__ import annotations

import ipaddress

import pytest

from azmanagers.agent.worker import worker_host
from azmanagers.cluster.guard import same_host
from azmanagers.emulator.instances import _own_loopback
from azmanagers.providers.local.procvm import loopback_address


def test_a_pools_instances_get_distinct_loopback_addresses() -> None:
    addresses = [loopback_address("local-abc", i) for i in range(3000)]
    assert len(set(addresses)) == 3000
    for address in addresses:
        ip = ipaddress.ip_address(address)
        assert ip.is_loopback and address != "127.0.0.1"
        assert not address.endswith((".0", ".255"))
    assert loopback_address("local-abc", 5) == loopback_address("local-abc", 5)
    nets = {loopback_address(f"pool-{i}", 0).split(".")[1] for i in range(50)}
    assert len(nets) > 30  # pools seldom share a net
    assert all(1 <= int(n) <= 254 for n in nets)


@pytest.mark.parametrize(
    ("peer", "target", "same"),
    [
        ("127.0.0.1", "127.31.0.7", True),  # the kernel's loopback source: this machine
        ("127.0.0.1", "127.0.0.1", True),
        ("::1", "127.4.0.2", True),
        ("127.0.0.2", "127.31.0.7", False),  # bound another loopback address: not that host
        ("127.31.0.7", "127.31.0.7", True),
        ("10.0.0.4", "10.0.0.4", True),
        ("10.0.0.4", "10.0.0.5", False),
        ("127.0.0.1", "10.0.0.5", False),
        ("10.0.0.4", "127.0.0.1", False),
    ],
)
def test_the_guard_takes_the_default_loopback_source_for_any_loopback_host(
    peer: str, target: str, same: bool
) -> None:
    assert same_host(peer, target) is same


def test_the_instances_own_address_wins_over_a_loopback_worker_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZMANAGERS_WORKER_HOST", "127.9.0.3")
    assert worker_host({"worker_host": "127.0.0.1"}) == "127.9.0.3"
    assert worker_host({"worker_host": "localhost"}) == "127.9.0.3"
    assert worker_host({"worker_host": None}) == "127.9.0.3"
    assert worker_host({"worker_host": "10.1.2.3"}) == "10.1.2.3"  # chosen on purpose
    monkeypatch.delenv("AZMANAGERS_WORKER_HOST")
    assert worker_host({"worker_host": "127.0.0.1"}) == "127.0.0.1"
    assert worker_host({}) is None  # Dask chooses (a VM's own address)


def test_emulated_vms_listen_on_their_loopback_nic_address() -> None:
    assert _own_loopback("127.44.10.4") == "127.44.10.4"
    assert _own_loopback("10.0.10.4") == "127.0.0.1"  # VMs that do not run here
    assert _own_loopback("") == "127.0.0.1"
