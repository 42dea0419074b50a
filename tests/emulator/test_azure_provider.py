"""The azure provider on the official SDKs, against the emulator (instances without processes)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from azmanagers.emulator import Emulator, sample_scaleset_template, start_emulator
from azmanagers.emulator.server import EmulatorServer
from azmanagers.errors import ConfigError, NotAuthorisedError, NotFoundError, ProviderError
from azmanagers.providers.azure._clients import ArmSettings, resource_client
from azmanagers.providers.azure.provider import AzureProvider
from azmanagers.providers.azure.vms import instance_state
from azmanagers.providers.base import BootSpec, InstanceState, PoolSpec
from azmanagers.providers.tags import owner_id, resource_tags

SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "azm-rg"


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    emu = start_emulator()
    server = emu.server
    monkeypatch.setenv("AZMANAGERS_ARM_ENDPOINT", server.base_url)
    monkeypatch.setenv("AZMANAGERS_ARM_CA", str(server.ca_file))
    monkeypatch.setenv("AZMANAGERS_ARM_TOKEN", server.token)
    monkeypatch.setenv("AZMANAGERS_ARM_POLLING_S", "0")
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": "southcentralus"}
    )
    yield emu
    emu.stop()


@pytest.fixture
def emulator(emulated: Emulator) -> EmulatorServer:
    return emulated.server


def template() -> dict[str, object]:
    return sample_scaleset_template("cbox", SUB, RG)


def spec(name: str, cluster: str | None = None) -> PoolSpec:
    return PoolSpec(
        name=name,
        boot=BootSpec(role="worker", payload={"scheduler": "tls://10.0.0.4:8786"}),
        tags=resource_tags(cluster or name, owner_id(), 3600),
        template=template(),
    )


def test_pool_lifecycle_uses_few_calls(emulator: EmulatorServer) -> None:
    provider = AzureProvider(SUB, RG)
    provider.create_pool(spec("pool"))
    provider.create_pool(spec("pool"))  # idempotent: one PUT in all
    assert len(emulator.calls_matching("PUT", "/virtualMachineScaleSets/pool")) == 1
    assert provider.list_instances("pool") == []

    before = len(emulator.calls)
    provider.scale_pool("pool", 3)
    assert len(emulator.calls) - before == 1  # one PATCH, no polling
    before = len(emulator.calls)
    instances = provider.list_instances("pool")
    assert len(emulator.calls) - before == 1  # one list call
    assert sorted(i.id for i in instances) == ["pool_0", "pool_1", "pool_2"]
    assert all(i.state is InstanceState.RUNNING for i in instances)
    assert all(abs(i.created_at - time.time()) < 60 for i in instances)

    provider.delete_instances("pool", ["pool_1", "pool_2"])
    assert len(emulator.calls_matching("POST", "/virtualMachineScaleSets/pool/delete")) == 1
    assert [i.id for i in provider.list_instances("pool")] == ["pool_0"]

    provider.delete_pool("pool", wait=True)
    assert provider.list_instances("pool") == []
    provider.delete_pool("pool", wait=True)  # repeating is safe


def test_the_boot_script_travels_as_custom_data_with_our_tags(emulated: Emulator) -> None:
    provider = AzureProvider(SUB, RG)
    provider.create_pool(spec("tagged", cluster="c-1"))
    body = provider._compute.virtual_machine_scale_sets.get(RG, "tagged").as_dict()
    # Azure never gives custom data back: read the model the emulator stored
    with emulated.state.lock:
        [stored] = [s.body for s in emulated.state.scalesets.values() if s.name == "tagged"]
    custom = stored["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
    assert "customData" not in body["properties"]["virtualMachineProfile"]["osProfile"]
    script = base64.b64decode(custom).decode()
    assert script.startswith("#!/bin/bash") and "azmanagers.agent worker" in script
    assert body["sku"]["capacity"] == 0
    assert body["tags"]["azmanagers-cluster"] == "c-1"
    assert set(body["tags"]) >= {"azmanagers-owner", "azmanagers-expires"}


def test_owned_resources_are_found_by_exact_tag(emulator: EmulatorServer) -> None:
    del emulator
    provider = AzureProvider(SUB, RG)
    provider.create_pool(spec("p-abc", cluster="abc"))
    provider.create_pool(spec("p-abcd", cluster="abcd"))
    assert [r.name for r in provider.list_owned_resources(cluster="abc")] == ["p-abc"]
    found = {r.name: r for r in provider.list_owned_resources()}
    assert set(found) == {"p-abc", "p-abcd"}
    assert found["p-abc"].owner_alive
    provider.delete_owned_resource(found["p-abc"])
    assert [r.name for r in provider.list_owned_resources()] == ["p-abcd"]


def test_errors_are_mapped_at_the_seam(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    del emulator
    provider = AzureProvider(SUB, RG)
    with pytest.raises(NotFoundError, match="scaling scale set nope"):
        provider.scale_pool("nope", 2)
    with pytest.raises(ConfigError, match="not an instance"):
        provider.delete_instances("pool", ["other_1"])
    monkeypatch.setenv("AZMANAGERS_ARM_TOKEN", "not-the-token")
    with pytest.raises(NotAuthorisedError, match="az login"):
        AzureProvider(SUB, RG).list_owned_resources()
    assert issubclass(NotAuthorisedError, ProviderError)


def test_arm_settings_refuse_plain_http_and_missing_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZMANAGERS_ARM_ENDPOINT", "http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="https://"):
        ArmSettings.from_environment()
    monkeypatch.setenv("AZMANAGERS_ARM_ENDPOINT", "https://127.0.0.1:1")
    monkeypatch.setenv("AZMANAGERS_ARM_CA", "/no/such/ca.pem")
    with pytest.raises(ConfigError, match="not a file"):
        ArmSettings.from_environment()
    monkeypatch.setenv("AZMANAGERS_ARM_TOKEN", "secret-token-value")
    monkeypatch.delenv("AZMANAGERS_ARM_CA")
    assert "secret-token-value" not in repr(ArmSettings.from_environment())


@pytest.mark.parametrize(
    ("provisioning", "codes", "expected"),
    [
        ("Creating", [], InstanceState.CREATING),
        ("Succeeded", ["ProvisioningState/succeeded", "PowerState/running"], InstanceState.RUNNING),
        ("Succeeded", ["PowerState/deallocated"], InstanceState.STOPPED),
        ("Failed", [], InstanceState.FAILED),
        ("Succeeded", ["ProvisioningState/failed/AllocationFailed"], InstanceState.FAILED),
        ("Deleting", ["PowerState/running"], InstanceState.DELETING),
    ],
)
def test_instance_states_map_from_the_instance_view(
    provisioning: str, codes: list[str], expected: InstanceState
) -> None:
    assert instance_state(provisioning, codes) is expected


def test_real_azure_refuses_a_loopback_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZMANAGERS_ARM_ENDPOINT", "https://management.azure.com")
    provider = AzureProvider(SUB, RG)  # makes no call
    for loopback in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(ConfigError, match="scheduler_host="):
            provider.check_reachable(loopback)
    provider.check_reachable("10.0.0.4")
    monkeypatch.setenv("AZMANAGERS_ARM_ENDPOINT", "https://127.0.0.1:4443")  # the emulator
    AzureProvider(SUB, RG).check_reachable("127.0.0.1")
