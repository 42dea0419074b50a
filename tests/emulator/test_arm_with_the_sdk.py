"""The emulator's ARM routes, driven by the official Azure SDKs over HTTPS."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

from azmanagers.emulator import start_emulator
from azmanagers.emulator.server import EmulatorServer
from azmanagers.providers.azure._credential import StaticTokenCredential

SUB = "00000000-0000-0000-0000-000000000001"
RG = "azm-test-rg"


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    emu = start_emulator()
    server = emu.server
    yield server
    emu.stop()


def clients(server: EmulatorServer) -> tuple[ComputeManagementClient, ResourceManagementClient]:
    cred = StaticTokenCredential(server.token)
    options = {"connection_verify": str(server.ca_file), "polling_interval": 0}
    compute = ComputeManagementClient(cred, SUB, server.base_url, **options)
    resources = ResourceManagementClient(cred, SUB, base_url=server.base_url, **options)
    return compute, resources


def vmss_body(capacity: int) -> dict[str, object]:
    return {
        "location": "southcentralus",
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
        "tags": {"azmanagers-cluster": "c1"},
        "properties": {"overprovision": False, "upgradePolicy": {"mode": "Manual"}},
    }


def test_scale_set_lifecycle_through_the_sdk(emulator: EmulatorServer) -> None:
    compute, resources = clients(emulator)
    resources.resource_groups.create_or_update(RG, {"location": "southcentralus"})
    created = compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool1", vmss_body(2)
    ).result()
    assert created.name == "pool1"
    assert created.sku.capacity == 2
    assert created.properties.provisioning_state == "Succeeded"  # the final GET after polling
    vms = list(compute.virtual_machine_scale_set_vms.list(RG, "pool1", expand="instanceView"))
    assert sorted(vm.instance_id for vm in vms) == ["0", "1"]
    codes = {s.code for s in vms[0].properties.instance_view.statuses}
    assert "PowerState/running" in codes

    updated = compute.virtual_machine_scale_sets.begin_update(
        RG, "pool1", {"sku": {"capacity": 4}}
    ).result()
    assert updated.sku.capacity == 4
    compute.virtual_machine_scale_sets.begin_delete_instances(
        RG, "pool1", {"instanceIds": ["0", "3"]}
    ).result()
    left = sorted(vm.instance_id for vm in compute.virtual_machine_scale_set_vms.list(RG, "pool1"))
    assert left == ["1", "2"]
    assert compute.virtual_machine_scale_sets.get(RG, "pool1").sku.capacity == 2
    assert [s.name for s in compute.virtual_machine_scale_sets.list(RG)] == ["pool1"]

    compute.virtual_machine_scale_sets.begin_delete(RG, "pool1").result()
    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machine_scale_sets.get(RG, "pool1")
    assert list(compute.virtual_machine_scale_sets.list(RG)) == []
    # every long-running call was polled through its Azure-AsyncOperation URL
    assert len(emulator.calls_matching("GET", "/operations/")) >= 4


def test_arm_errors_come_back_as_sdk_errors(emulator: EmulatorServer) -> None:
    compute, resources = clients(emulator)
    with pytest.raises(ResourceNotFoundError, match="ResourceGroupNotFound"):
        compute.virtual_machine_scale_sets.get("no-such-rg", "x")
    resources.resource_groups.create_or_update(RG, {"location": "westus"})
    with pytest.raises(HttpResponseError, match=r"sku\.capacity"):
        compute.virtual_machine_scale_sets.begin_create_or_update(
            RG, "bad", {"location": "westus", "sku": {"capacity": -1}}
        ).result()


def _raw(server: EmulatorServer, path: str, token: str | None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(server.base_url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_requests_without_the_token_or_api_version_are_refused(emulator: EmulatorServer) -> None:
    path = f"/subscriptions/{SUB}/resourceGroups/{RG}?api-version=2024-03-01"
    status, body = _raw(emulator, path, None)
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"  # type: ignore[index]
    status, _ = _raw(emulator, path, "wrong-token")
    assert status == 401
    status, body = _raw(emulator, f"/subscriptions/{SUB}/resourceGroups/{RG}", emulator.token)
    assert status == 400 and body["error"]["code"] == "MissingApiVersionParameter"  # type: ignore[index]
    assert [c.status for c in emulator.calls] == [401, 401, 400]


def test_the_token_never_appears_in_the_credentials_repr(emulator: EmulatorServer) -> None:
    assert emulator.token not in repr(StaticTokenCredential(emulator.token))


def test_instance_views_carry_azures_status_fields(emulator: EmulatorServer) -> None:
    compute, resources = clients(emulator)
    resources.resource_groups.create_or_update(RG, {"location": "southcentralus"})
    compute.virtual_machine_scale_sets.begin_create_or_update(RG, "pool2", vmss_body(2)).result()
    # what `az vmss get-instance-view` reads: a summary of the instances' states
    view = compute.virtual_machine_scale_sets.get_instance_view(RG, "pool2")
    summary = {s.code: s.count for s in view.virtual_machine.statuses_summary}
    assert summary == {"PowerState/running": 2, "ProvisioningState/succeeded": 2}
    assert view.statuses[0].display_status == "Provisioning succeeded"
    # one instance's view, and the list's: each status with its level and display text
    member = compute.virtual_machine_scale_set_vms.get_instance_view(RG, "pool2", "0")
    by_code = {s.code: s for s in member.statuses}
    power = by_code["PowerState/running"]
    assert (power.level, power.display_status) == ("Info", "VM running")
    provisioned = by_code["ProvisioningState/succeeded"]
    assert provisioned.time is not None and provisioned.display_status == "Provisioning succeeded"
    (listed, _) = compute.virtual_machine_scale_set_vms.list(RG, "pool2", expand="instanceView")
    assert all(s.display_status for s in listed.instance_view.statuses)
    with pytest.raises(ResourceNotFoundError):
        compute.virtual_machine_scale_set_vms.get_instance_view(RG, "pool2", "7")
