"""A regular/spot mix: a Flexible scale set with a priority mix policy, through the emulator."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import distributed
import pytest

import azmanagers
from azmanagers.emulator import Emulator, sample_scaleset_template, start_emulator
from azmanagers.emulator.server import ArmError, EmulatorServer
from azmanagers.errors import ConfigError, QuotaError
from azmanagers.providers.azure._clients import ArmSettings, resource_client
from azmanagers.providers.azure.provider import AzureProvider
from azmanagers.providers.base import (
    BootSpec,
    InstanceState,
    PoolSpec,
    Priority,
)
from azmanagers.providers.tags import owner_id, resource_tags

SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "azm-rg"
MIX = Priority(spot=True, regular_base=1, regular_percentage_above_base=25)
FLEX_NAME = re.compile(r"^mix_[0-9a-f]{8}$")


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator whose VMs are records only (no processes)."""
    emu = start_emulator()
    for key, value in emu.environment().items():
        monkeypatch.setenv(key, value)
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": "southcentralus"}
    )
    yield emu
    emu.stop()


def mix_spec(priority: Priority = MIX) -> PoolSpec:
    return PoolSpec(
        name="mix",
        boot=BootSpec(role="worker", payload={"scheduler": "tls://10.0.0.4:8786"}),
        tags=resource_tags("mix", owner_id(), 3600),
        template=sample_scaleset_template("mix", SUB, RG),
        priority=priority,
    )


def priorities(emu: Emulator) -> list[str]:
    (scaleset,) = emu.state.scalesets.values()
    return [vm.priority for vm in sorted(scaleset.vms.values(), key=lambda vm: vm.seq)]


def test_a_mix_makes_a_flexible_scale_set_listed_and_deleted_by_vm_name(emulator: Emulator) -> None:
    server: EmulatorServer = emulator.server
    provider = AzureProvider(SUB, RG)
    provider.create_pool(mix_spec())
    (scaleset,) = emulator.state.scalesets.values()
    props = scaleset.body["properties"]
    assert props["orchestrationMode"] == "Flexible"
    assert props["priorityMixPolicy"] == {
        "baseRegularPriorityCount": 1,
        "regularPriorityPercentageAboveBase": 25.0,
    }
    assert "upgradePolicy" not in props and "overprovision" not in props
    assert props["virtualMachineProfile"]["priority"] == "Spot"

    provider.scale_pool("mix", 5)
    # base 1 regular, then 25 % of the rest regular (rounded up): 2 regular, 3 spot
    assert sorted(priorities(emulator)) == ["Regular", "Regular", "Spot", "Spot", "Spot"]
    before = len(server.calls)
    instances = provider.list_instances("mix")
    assert len(server.calls) - before == 1  # one list call, as for a Uniform scale set
    assert all(FLEX_NAME.match(i.id) for i in instances), [i.id for i in instances]
    assert all(i.state is InstanceState.RUNNING for i in instances)

    doomed = sorted(i.id for i in instances)[:2]
    before = len(server.calls)
    provider.delete_instances("mix", doomed)
    assert len(server.calls) - before == 1  # one batched delete, by VM name
    assert sorted(i.id for i in provider.list_instances("mix")) == sorted(
        i.id for i in instances if i.id not in doomed
    )
    kept = next(i.id for i in instances if i.id not in doomed)
    provider.instance_log("mix", kept)  # a Flexible VM's boot log comes through its VM
    assert server.calls_matching("POST", f"/virtualMachines/{kept}/retrieveBootDiagnosticsData")

    # a provider that did not create the pool reads its mode once, then lists as above
    other = AzureProvider(SUB, RG)
    assert len(other.list_instances("mix")) == 3
    before = len(server.calls)
    other.list_instances("mix")
    assert len(server.calls) - before == 1
    provider.delete_pool("mix", wait=True)
    assert emulator.state.scalesets == {}


def test_the_emulator_refuses_a_mix_azure_would_refuse(emulator: Emulator) -> None:
    provider = AzureProvider(SUB, RG)
    provider.create_pool(mix_spec(Priority(spot=True)))  # all spot: a Uniform scale set
    (scaleset,) = emulator.state.scalesets.values()
    assert not scaleset.flexible
    provider.scale_pool("mix", 2)
    assert priorities(emulator) == ["Spot", "Spot"]
    body = dict(scaleset.body)
    body["properties"] = {**body["properties"], "priorityMixPolicy": {}}
    with pytest.raises(ArmError, match="only on a scale set with orchestrationMode Flexible"):
        from azmanagers.emulator import flexible

        flexible.validate(body)
    provider.delete_pool("mix")
    provider.create_pool(mix_spec())
    provider.scale_pool("mix", 1)
    (regular,) = [vm.name for vm in next(iter(emulator.state.scalesets.values())).vms.values()]
    with pytest.raises(ArmError, match="not a spot VM"):
        emulator.state.evict([regular])


def test_quota_for_a_mix_counts_regular_and_spot_vcpus_apart(emulator: Emulator) -> None:
    provider = AzureProvider(SUB, RG)
    template = sample_scaleset_template("mix", SUB, RG)
    emulator.state.faults.update({"spot_cores_limit": 4, "family_cores_limit": 4})
    # 2 vCPUs each: 2 regular and 2 spot fit exactly; all 4 regular or all spot do not
    provider.check_capacity(template, 4, priority=Priority(spot=True, regular_base=2))
    with pytest.raises(QuotaError, match=r"3 spot x .* spot vCPUs needs 6"):
        provider.check_capacity(template, 4, priority=Priority(spot=True, regular_base=1))
    with pytest.raises(QuotaError, match=r"4 regular x .* needs 8"):
        provider.check_capacity(template, 4)
    # growing from 2: the base is taken already, so both new ones are spot
    provider.check_capacity(template, 2, current=2, priority=Priority(spot=True, regular_base=2))


def test_a_mix_needs_spot() -> None:
    with pytest.raises(ConfigError, match="need spot=True"):
        azmanagers.addprocs("local", 1, spot_base_regular_priority_count=1)
    with pytest.raises(ConfigError, match="percentage from 0 to 100"):
        azmanagers.addprocs("local", 1, spot=True, spot_regular_percentage_above_base=150)


@pytest.mark.integration
def test_a_mixed_cluster_joins_and_loses_only_spot_workers(emulated_azure: Emulator) -> None:
    cluster = azmanagers.addprocs(
        "myscaleset",
        3,
        waitfor=True,
        timeout=90,
        spot=True,
        spot_base_regular_priority_count=1,
    )
    (scaleset,) = emulated_azure.state.scalesets.values()
    assert scaleset.flexible
    kinds = {vm.name: vm.priority for vm in scaleset.vms.values()}
    assert sorted(kinds.values()) == ["Regular", "Spot", "Spot"]
    assert set(azmanagers.workers()) == set(kinds)  # workers are named after their VMs
    client = distributed.default_client()
    assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6

    spot = sorted(name for name, kind in kinds.items() if kind == "Spot")[0]
    emulated_azure.state.evict([spot], notice_s=2)
    deadline = time.monotonic() + 90
    while spot in azmanagers.workers() or cluster.nworkers() < 3:
        assert time.monotonic() < deadline, "the evicted spot worker was not replaced"
        time.sleep(0.2)
    assert cluster.evicted == [spot]

    regular = next(name for name, kind in kinds.items() if kind == "Regular")
    azmanagers.rmprocs([regular])  # one batched delete by VM name
    deadline = time.monotonic() + 60
    while regular in {vm.name for vm in scaleset.vms.values()}:
        assert time.monotonic() < deadline, "the regular VM was not deleted"
        time.sleep(0.2)
    azmanagers.rmprocs()
    assert emulated_azure.state.scalesets == {}
