"""ARM's semantics in the emulator, through the real SDKs: subscription-wide lists, deleting a
resource group, a partial PUT on a scale set, the fields Azure always returns, the call log."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.emulator.scalesets import custom_data
from azmanagers.emulator.tokens import managed_identity_ids
from azmanagers.providers.azure._clients import (
    ArmSettings,
    compute_client,
    network_client,
    resource_client,
)
from tests.conftest import processes_under

SUB = "00000000-0000-0000-0000-0000000000ee"
RG, OTHER_RG = "azm-sem", "azm-sem-other"
LOCATION = "southcentralus"


@dataclass
class Clients:
    compute: Any
    network: Any
    resources: Any


def clients_for(emu: Emulator) -> Clients:
    env = emu.environment()
    settings = ArmSettings(
        env["AZMANAGERS_ARM_ENDPOINT"], env["AZMANAGERS_ARM_CA"], env["AZMANAGERS_ARM_TOKEN"], 0
    )
    return Clients(
        compute_client(settings, SUB),
        network_client(settings, SUB),
        resource_client(settings, SUB),
    )


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = start_emulator()
    yield emu
    emu.stop()


def raw(emu: Emulator, method: str, path: str) -> tuple[int, Any, dict[str, str]]:
    """One HTTPS request with the emulator's token; (status, JSON body or None, headers)."""
    request = urllib.request.Request(emu.server.base_url + path, method=method)
    request.add_header("Authorization", f"Bearer {emu.server.token}")
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            payload = reply.read()
            return reply.status, json.loads(payload) if payload else None, dict(reply.headers)
    except urllib.error.HTTPError as err:
        payload = err.read()
        return err.code, json.loads(payload) if payload else None, dict(err.headers)


def scaleset_body(capacity: int, tags: dict[str, str], script: str = "#!/bin/bash\n") -> dict:
    subnet = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/"
    return {
        "location": LOCATION,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
        "tags": tags,
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {
                        "publisher": "Canonical",
                        "offer": "ubuntu-24_04-lts",
                        "sku": "server",
                        "version": "latest",
                    }
                },
                "osProfile": {
                    "computerNamePrefix": "node",
                    "adminUsername": "azuser",
                    "adminPassword": "not-returned-1!",
                    "customData": base64.b64encode(script.encode()).decode(),
                },
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {
                            "name": "nic0",
                            "properties": {
                                "primary": True,
                                "ipConfigurations": [
                                    {
                                        "name": "ip0",
                                        "properties": {
                                            "subnet": {"id": subnet + "virtualNetworks/v/subnets/s"}
                                        },
                                    }
                                ],
                            },
                        }
                    ]
                },
            },
        },
    }


def make_vm(c: Clients, rg: str, name: str, tags: dict[str, str] | None = None) -> Any:
    """A NIC and a VM using it, as dask-cloudprovider and `az vm create` make them."""
    subnet = f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/"
    nic = c.network.network_interfaces.begin_create_or_update(
        rg,
        f"{name}-nic",
        {
            "location": LOCATION,
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {"subnet": {"id": subnet + "virtualNetworks/v/subnets/s"}},
                    }
                ]
            },
        },
    ).result()
    return c.compute.virtual_machines.begin_create_or_update(
        rg,
        name,
        {
            "location": LOCATION,
            "tags": tags or {},
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
                "osProfile": {
                    "computerName": name,
                    "adminUsername": "azuser",
                    "adminPassword": "not-returned-1!",
                },
                "storageProfile": {
                    "imageReference": {
                        "publisher": "Canonical",
                        "offer": "ubuntu-24_04-lts",
                        "sku": "server",
                        "version": "latest",
                    },
                    "osDisk": {"createOption": "FromImage", "diskSizeGB": 30},
                },
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
            },
        },
    ).result()


def test_subscription_wide_lists_with_filters(emulator: Emulator) -> None:
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION, "tags": {"team": "a"}})
    c.resources.resource_groups.create_or_update(OTHER_RG, {"location": "westeurope"})
    c.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool1", scaleset_body(1, {"azm-cluster": "c1"})
    ).result()
    c.compute.virtual_machine_scale_sets.begin_create_or_update(
        OTHER_RG, "pool2", scaleset_body(0, {"azm-cluster": "c2"})
    ).result()
    make_vm(c, RG, "vm1", {"azm-cluster": "c1"})
    make_vm(c, OTHER_RG, "vm2")

    # `az resource list`: every resource of the subscription, its OS disks (managed disks
    # the VMs made) included
    everything = {(r.type, r.name) for r in c.resources.resources.list()}
    assert {
        ("Microsoft.Compute/virtualMachineScaleSets", "pool1"),
        ("Microsoft.Compute/virtualMachineScaleSets", "pool2"),
        ("Microsoft.Compute/virtualMachines", "vm1"),
        ("Microsoft.Compute/virtualMachines", "vm2"),
        ("Microsoft.Network/networkInterfaces", "vm1-nic"),
        ("Microsoft.Network/networkInterfaces", "vm2-nic"),
    } <= everything
    disks = [n for t, n in everything if t == "Microsoft.Compute/disks"]
    assert len(disks) == 2 and all("_OsDisk_1_" in n for n in disks)
    # `az resource list --tag azm-cluster=c1`: tag names ignore case, values do not
    tagged = list(
        c.resources.resources.list(filter="tagName eq 'AZM-cluster' and tagValue eq 'c1'")
    )
    assert sorted(r.name for r in tagged) == ["pool1", "vm1"]
    assert all(r.tags is None for r in tagged)  # ARM leaves tags out of such answers
    named = list(c.resources.resources.list(filter="tagName eq 'azm-cluster'"))
    assert all(r.tags and "azm-cluster" in r.tags for r in named)  # by name alone: kept
    assert (
        list(c.resources.resources.list(filter="tagName eq 'azm-cluster' and tagValue eq 'C1'"))
        == []
    )
    assert sorted(
        r.name for r in c.resources.resources.list(filter="startswith(tagname, 'azm')")
    ) == ["pool1", "pool2", "vm1"]
    # $expand and $top are taken
    some = list(c.resources.resources.list(expand="createdTime,provisioningState", top=2))
    assert len(some) == 2 and some[0].provisioning_state == "Succeeded"
    # the group's own list has the same kinds, and only that group's
    in_group = {r.name for r in c.resources.resources.list_by_resource_group(OTHER_RG)}
    assert {"pool2", "vm2", "vm2-nic"} <= in_group and "vm1" not in in_group
    typed = c.resources.resources.list(
        filter="resourceType eq 'Microsoft.Network/networkInterfaces'"
    )
    assert sorted(r.name for r in typed) == ["vm1-nic", "vm2-nic"]

    # `az group list`, with and without a tag filter
    assert sorted(g.name for g in c.resources.resource_groups.list()) == [RG, OTHER_RG]
    assert [
        g.name
        for g in c.resources.resource_groups.list(filter="tagName eq 'team' and tagValue eq 'a'")
    ] == [RG]
    # `az vmss list` and `az vm list` without -g
    assert sorted(s.name for s in c.compute.virtual_machine_scale_sets.list_all()) == [
        "pool1",
        "pool2",
    ]
    assert sorted(v.name for v in c.compute.virtual_machines.list_all()) == ["vm1", "vm2"]
    # another subscription sees none of it
    status, body, _ = raw(emulator, "GET", "/subscriptions/other/resources?api-version=2022-09-01")
    assert (status, body) == (200, {"value": []})
    status, body, _ = raw(
        emulator,
        "GET",
        f"/subscriptions/{SUB}/resources?api-version=2022-09-01&$filter=kind%20eq%20'x'",
    )
    assert status == 400 and body["error"]["code"] == "InvalidFilterInQueryString"


def test_deleting_a_group_deletes_what_it_holds(emulator: Emulator) -> None:
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    c.resources.resource_groups.create_or_update(OTHER_RG, {"location": LOCATION})
    c.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool1", scaleset_body(2, {})
    ).result()
    make_vm(c, RG, "vm1")
    make_vm(c, OTHER_RG, "vm2")
    assert len(list(c.resources.resources.list_by_resource_group(RG))) == 4  # + the OS disk

    poller = c.resources.resource_groups.begin_delete(RG)
    poller.result()
    assert poller.status() == "Succeeded"
    with pytest.raises(ResourceNotFoundError, match="ResourceGroupNotFound"):
        c.resources.resource_groups.get(RG)
    with pytest.raises(ResourceNotFoundError, match="ResourceGroupNotFound"):
        c.resources.resource_groups.begin_delete(RG)
    state = emulator.state
    assert not any(k[1] == RG for k in [*state.scalesets, *state.vms, *state.nics, *state.others])
    # the other group keeps all it had
    left = sorted(r.type.rsplit("/", 1)[-1] for r in c.resources.resources.list())
    assert left == ["disks", "networkInterfaces", "virtualMachines"]
    assert [g.name for g in c.resources.resource_groups.list()] == [OTHER_RG]
    # a new group of the same name starts empty
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    assert list(c.resources.resources.list_by_resource_group(RG)) == []


def test_group_exists_answers_with_a_status(emulator: Emulator) -> None:
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    # `az group exists` sends HEAD: 204 or 404, no body
    assert c.resources.resource_groups.check_existence(RG) is True
    assert c.resources.resource_groups.check_existence(RG.upper()) is True
    assert c.resources.resource_groups.check_existence("nope") is False
    assert [(x.method, x.status) for x in emulator.server.calls_matching("HEAD")] == [
        ("HEAD", 204),
        ("HEAD", 204),
        ("HEAD", 404),
    ]


def test_a_partial_put_keeps_what_the_body_leaves_out(emulator: Emulator) -> None:
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    script = "#!/bin/bash\necho kept-custom-data\n"
    created = c.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool1", scaleset_body(1, {"azm-cluster": "c1"}, script)
    ).result()
    # what `az vmss scale` sends: location and sku only
    scaled = c.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG,
        "pool1",
        {
            "location": LOCATION,
            "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": 3},
        },
    ).result()
    assert scaled.sku.capacity == 3 and scaled.tags == {"azm-cluster": "c1"}
    profile = scaled.virtual_machine_profile
    assert profile.os_profile.computer_name_prefix == "node"
    assert profile.network_profile.network_interface_configurations[0].name == "nic0"
    assert scaled.unique_id == created.unique_id and scaled.etag != created.etag
    members = list(c.compute.virtual_machine_scale_set_vms.list(RG, "pool1"))
    assert sorted(m.instance_id for m in members) == ["0", "1", "2"]
    # the new instances boot from the kept model
    scaleset = emulator.state.scaleset(SUB, RG, "pool1")
    assert custom_data(scaleset) == script
    # objects merge, lists and given tags replace
    c.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool1", {"location": LOCATION, "tags": {"b": "2"}, "zones": ["1"]}
    ).result()
    again = c.compute.virtual_machine_scale_sets.get(RG, "pool1")
    assert again.tags == {"b": "2"} and again.zones == ["1"]
    assert again.sku.capacity == 3


def _iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_the_fields_azure_always_returns(emulator: Emulator) -> None:
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    c.compute.virtual_machine_scale_sets.begin_create_or_update(
        RG, "pool1", scaleset_body(2, {})
    ).result()
    scaleset = c.compute.virtual_machine_scale_sets.get(RG, "pool1")
    assert scaleset.unique_id and scaleset.single_placement_group is True and scaleset.etag
    assert scaleset.time_created.tzinfo is not None
    assert scaleset.virtual_machine_profile.os_profile.admin_password is None
    (first, second) = c.compute.virtual_machine_scale_set_vms.list(RG, "pool1")
    assert first.sku.name == "Standard_D2s_v3" and first.vm_id and first.vm_id != second.vm_id
    assert first.hardware_profile.vm_size == "Standard_D2s_v3"
    assert first.storage_profile.os_disk.os_type == "Linux"
    assert first.storage_profile.data_disks == []
    assert (first.os_profile.computer_name, second.os_profile.computer_name) == (
        "node000000",
        "node000001",
    )
    assert first.os_profile.admin_username == "azuser" and first.os_profile.custom_data is None
    assert first.os_profile.admin_password is None and first.os_profile.secrets == []
    member = c.compute.virtual_machine_scale_set_vms.get_instance_view(RG, "pool1", "1")
    assert member.computer_name == "node000001"  # as `az vmss get-instance-view` shows it
    (nic_ref,) = first.network_profile.network_interfaces
    assert nic_ref.id.endswith(
        "/virtualMachineScaleSets/pool1/virtualMachines/0/networkInterfaces/nic0"
    )

    vm = make_vm(c, RG, "vm1")
    shown = c.compute.virtual_machines.get(RG, "vm1")
    assert shown.vm_id == vm.vm_id and len(shown.vm_id) == 36
    assert shown.storage_profile.os_disk.os_type == "Linux"
    assert shown.storage_profile.data_disks == [] and shown.os_profile.secrets == []
    assert shown.os_profile.admin_password is None
    disk_name = shown.storage_profile.os_disk.name
    assert disk_name.startswith("vm1_OsDisk_1_")
    assert shown.storage_profile.os_disk.managed_disk.id.endswith(f"/disks/{disk_name}")
    nic = c.network.network_interfaces.get(RG, "vm1-nic")
    assert nic.virtual_machine.id == shown.id and nic.primary is True
    assert nic.mac_address and len(nic.mac_address.split("-")) == 6 and nic.etag
    (config,) = nic.ip_configurations
    assert config.id == f"{nic.id}/ipConfigurations/ipconfig1" and config.primary is True
    assert config.private_ip_allocation_method == "Dynamic"
    assert config.private_ip_address_version == "IPv4"
    assert config.provisioning_state == "Succeeded" and config.private_ip_address

    # `az vm list-skus -l X` filters the unfiltered list on `locations`
    skus = list(c.compute.resource_skus.list())
    here = [s for s in skus if LOCATION in s.locations]
    assert {s.name for s in here} >= {"Standard_D2s_v3", "Standard_HB120rs_v3"}
    assert {loc for s in skus for loc in s.locations} >= {"eastus", "westeurope", LOCATION}
    assert here[0].location_info[0].location == LOCATION and here[0].location_info[0].zones
    only = list(c.compute.resource_skus.list(filter="location eq 'westeurope'"))
    assert only and {loc for s in only for loc in s.locations} == {"westeurope"}

    # long-running operations: ISO 8601 times, a NIC's under Microsoft.Network
    status, _, headers = raw(
        emulator,
        "DELETE",
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/vm1?api-version=2024-07-01",
    )
    assert status == 202
    url = headers["Azure-AsyncOperation"].removeprefix(emulator.server.base_url)
    assert "/providers/Microsoft.Compute/locations/" in url
    status, op, _ = raw(emulator, "GET", url)
    assert op["status"] == "Succeeded" and _iso(op["startTime"]).tzinfo is not None
    # the VM's NIC outlives it (deleteOption Detach), no longer attached; its OS disk too
    assert c.network.network_interfaces.get(RG, "vm1-nic").virtual_machine is None
    disk_left = [r for r in c.resources.resources.list() if r.type == "Microsoft.Compute/disks"]
    assert [d.name for d in disk_left] == [disk_name] and disk_left[0].managed_by is None
    status, _, headers = raw(
        emulator,
        "DELETE",
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces/vm1-nic?api-version=2024-05-01",
    )
    assert status == 202
    url = headers["Azure-AsyncOperation"].removeprefix(emulator.server.base_url)
    assert "/providers/Microsoft.Network/locations/" in url
    status, op, _ = raw(emulator, "GET", url)
    assert (status, op["status"]) == (200, "Succeeded")


def test_the_call_log_is_served_to_admins(emulator: Emulator) -> None:
    first, _, _ = raw(emulator, "GET", "/azmanagers-admin/calls")
    assert first == 200  # start_emulator shares the server's log with the admin route
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    list(c.resources.resources.list(filter="tagName eq 'a'"))
    status, body, _ = raw(emulator, "GET", "/azmanagers-admin/calls")
    assert status == 200
    calls = body["value"]
    assert [c["index"] for c in calls] == list(range(len(calls))) and body["next"] == len(calls)
    listed = [c for c in calls if c["path"] == f"/subscriptions/{SUB}/resources"]
    assert listed and "tagName" in urllib.parse.unquote(listed[0]["query"])
    assert listed[0]["status"] == 200 and "azsdk-python" in listed[0]["user_agent"]
    assert {"method", "path", "query", "status", "user_agent"} <= set(calls[0])
    # a client counts its own calls from where it last looked
    mark = body["next"]
    c.resources.resource_groups.get(RG)
    status, body, _ = raw(emulator, "GET", f"/azmanagers-admin/calls?since={mark}")
    paths = [c["path"].lower() for c in body["value"]]
    # the previous look at the log, then the group's GET
    assert paths == ["/azmanagers-admin/calls", f"/subscriptions/{SUB}/resourcegroups/{RG}"]
    status, body, _ = raw(emulator, "GET", "/azmanagers-admin/calls?since=x")
    assert status == 400


def test_scaled_instances_boot_the_kept_model_and_a_group_delete_stops_them(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "emulator"
    emu = start_emulator(run_instances=True, folder=folder)
    try:
        c = clients_for(emu)
        c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
        script = "#!/bin/bash\necho booted-with-the-kept-custom-data\nexec sleep 600\n"
        c.compute.virtual_machine_scale_sets.begin_create_or_update(
            RG, "pool1", scaleset_body(1, {"azm-cluster": "c1"}, script)
        ).result()
        c.compute.virtual_machine_scale_sets.begin_create_or_update(
            RG, "pool1", {"location": LOCATION, "sku": {"name": "Standard_D2s_v3", "capacity": 2}}
        ).result()
        make_vm(c, RG, "vm1")
        # each VM's folder is named after it and its vmId
        vms = folder / "vms"
        logs = [vm / "boot.log" for name in ("pool1_0", "pool1_1") for vm in vms.glob(f"{name}-*")]
        assert len(logs) == 2
        deadline = time.monotonic() + 30
        while not all(
            log.exists() and "booted-with-the-kept-custom-data" in log.read_text() for log in logs
        ):
            assert time.monotonic() < deadline, [log.exists() and log.read_text() for log in logs]
            time.sleep(0.1)
        assert len(processes_under(folder)) >= 3  # two instances and the VM
        # each VM's IMDS tells it the vmId ARM shows
        runner = emu.state.runner
        assert runner is not None
        for member in c.compute.virtual_machine_scale_set_vms.list(RG, "pool1"):
            assert runner.identities[member.vm_id].name == member.name
        assert runner.identities[c.compute.virtual_machines.get(RG, "vm1").vm_id].name == "vm1"

        c.resources.resource_groups.begin_delete(RG).result()
        assert runner.identities == {}
        deadline = time.monotonic() + 30
        while processes_under(folder):
            assert time.monotonic() < deadline, processes_under(folder)
            time.sleep(0.1)
    finally:
        emu.stop()


def test_long_running_operations_point_where_arm_does(emulator: Emulator) -> None:
    """A PUT names its status URL only (az, with final-state-via location, then GETs the
    resource); a DELETE also a Location whose GET is the (empty) result."""
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    vmss = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/"
    vmss += "virtualMachineScaleSets/pool1?api-version=2024-07-01"
    body = json.dumps(scaleset_body(1, {})).encode()
    request = urllib.request.Request(emulator.server.base_url + vmss, body, method="PUT")
    request.add_header("Authorization", f"Bearer {emulator.server.token}")
    request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=str(emulator.server.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=10) as reply:
        assert reply.status == 201 and "Location" not in reply.headers
        assert "/operations/" in reply.headers["Azure-AsyncOperation"]
    status, _, headers = raw(emulator, "DELETE", vmss)
    assert status == 202
    location = headers["Location"].removeprefix(emulator.server.base_url)
    assert "monitor=true" in location
    assert raw(emulator, "GET", location)[:2] == (200, None)
    # a NIC's under Microsoft.Network's operationResults
    make_vm(c, RG, "vm1")
    c.compute.virtual_machines.begin_delete(RG, "vm1").result()
    nic = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/"
    status, _, headers = raw(
        emulator, "DELETE", nic + "networkInterfaces/vm1-nic?api-version=2024-05-01"
    )
    location = headers["Location"].removeprefix(emulator.server.base_url)
    assert status == 202 and "/providers/Microsoft.Network/locations/" in location
    assert "/operationResults/" in location and raw(emulator, "GET", location)[:2] == (200, None)


def test_a_vm_with_a_system_identity_shows_its_principal(emulator: Emulator) -> None:
    c = clients_for(emulator)
    c.resources.resource_groups.create_or_update(RG, {"location": LOCATION})
    emulator.state.tenant_id = "11111111-2222-3333-4444-555555555555"
    made = make_vm(c, RG, "vm1")
    assert made.identity is None
    vm = c.compute.virtual_machines.get(RG, "vm1")
    body = vm.as_dict()
    body["identity"] = {"type": "SystemAssigned"}
    c.compute.virtual_machines.begin_create_or_update(RG, "vm1", body).result()
    shown = c.compute.virtual_machines.get(RG, "vm1")
    assert shown.vm_id == vm.vm_id  # a PUT on the VM keeps what Azure made
    assert shown.identity.principal_id == managed_identity_ids(vm.vm_id)[0]
    assert shown.identity.tenant_id == emulator.state.tenant_id
