"""Virtual networks, subnets, security groups, public IPs and managed disks, through the SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.providers.azure._clients import (
    ArmSettings,
    compute_client,
    network_client,
    resource_client,
)

SUB = "00000000-0000-0000-0000-0000000000ee"
RG = "azm-net"
LOCATION = "southcentralus"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    emu = start_emulator()
    for key, value in emu.environment().items():
        monkeypatch.setenv(key, value)
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": LOCATION}
    )
    yield emu
    emu.stop()


@pytest.fixture
def network(emulator: Emulator) -> Any:
    return network_client(ArmSettings.from_environment(), SUB)


@pytest.fixture
def compute(emulator: Emulator) -> Any:
    return compute_client(ArmSettings.from_environment(), SUB)


def make_vnet(network: Any, name: str = "vnet") -> Any:
    return network.virtual_networks.begin_create_or_update(
        RG,
        name,
        {
            "location": LOCATION,
            "properties": {
                "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                "subnets": [{"name": "default", "properties": {"addressPrefix": "10.0.0.0/24"}}],
            },
        },
    ).result()


def make_nic(network: Any, name: str, subnet_id: str, **extra: Any) -> Any:
    settings: dict[str, Any] = {"subnet": {"id": subnet_id}}
    if "public_ip" in extra:
        settings["publicIPAddress"] = {"id": extra.pop("public_ip")}
    properties = {"ipConfigurations": [{"name": "ipconfig1", "properties": settings}], **extra}
    return network.network_interfaces.begin_create_or_update(
        RG, name, {"location": LOCATION, "properties": properties}
    ).result()


def error_code(err: HttpResponseError) -> str:
    return str(err.error.code if err.error else "")


def test_a_virtual_network_serves_its_subnets(network: Any) -> None:
    vnet = make_vnet(network)
    assert vnet.provisioning_state == "Succeeded" and vnet.resource_guid
    assert vnet.id.endswith(
        f"/resourceGroups/{RG}/providers/Microsoft.Network/virtualNetworks/vnet"
    )
    [subnet] = network.subnets.list(RG, "vnet")
    assert (subnet.name, subnet.address_prefix) == ("default", "10.0.0.0/24")
    assert subnet.id == vnet.id + "/subnets/default"
    assert subnet.type == "Microsoft.Network/virtualNetworks/subnets"

    added = network.subnets.begin_create_or_update(
        RG, "vnet", "workers", {"properties": {"addressPrefix": "10.0.1.0/24"}}
    ).result()
    assert added.provisioning_state == "Succeeded"
    assert network.subnets.get(RG, "vnet", "workers").address_prefix == "10.0.1.0/24"
    assert [s.name for s in network.virtual_networks.get(RG, "vnet").subnets] == [
        "default",
        "workers",
    ]
    assert [v.name for v in network.virtual_networks.list(RG)] == ["vnet"]
    assert [v.name for v in network.virtual_networks.list_all()] == ["vnet"]
    with pytest.raises(ResourceNotFoundError):
        network.subnets.get(RG, "vnet", "absent")
    with pytest.raises(ResourceNotFoundError):
        network.subnets.list(RG, "no-such-vnet").next()


def test_a_security_group_keeps_its_rules_and_has_azures_defaults(network: Any) -> None:
    settings = {
        "protocol": "Tcp",
        "sourcePortRange": "*",
        "destinationPortRange": "8786-8787",
        "sourceAddressPrefix": "*",
        "destinationAddressPrefix": "*",
        "access": "Allow",
        "priority": 100,
        "direction": "Inbound",
    }
    nsg = network.network_security_groups.begin_create_or_update(
        RG,
        "nsg",
        {
            "location": LOCATION,
            "properties": {"securityRules": [{"name": "dask", "properties": settings}]},
        },
    ).result()
    [kept] = nsg.security_rules
    assert (kept.name, kept.destination_port_range, kept.priority) == ("dask", "8786-8787", 100)
    assert kept.id == nsg.id + "/securityRules/dask"
    defaults = {r.name: (r.priority, r.direction, r.access) for r in nsg.default_security_rules}
    assert defaults["DenyAllInBound"] == (65500, "Inbound", "Deny")
    assert defaults["AllowVnetOutBound"] == (65000, "Outbound", "Allow")
    assert len(defaults) == 6
    assert network.network_security_groups.get(RG, "nsg").security_rules[0].name == "dask"

    with pytest.raises(HttpResponseError) as err:
        network.network_security_groups.begin_create_or_update(
            RG,
            "bad",
            {
                "location": LOCATION,
                "properties": {
                    "securityRules": [{"name": "low", "properties": {**settings, "priority": 50}}]
                },
            },
        ).result()
    assert err.value.status_code == 400
    assert error_code(err.value) == "SecurityRuleInvalidPriority"


def test_a_nic_uses_a_public_ip_and_a_security_group_which_stay_while_it_does(
    network: Any, emulator: Emulator
) -> None:
    subnet_id = make_vnet(network).subnets[0].id
    nsg = network.network_security_groups.begin_create_or_update(
        RG, "nsg", {"location": LOCATION}
    ).result()
    public_ip = network.public_ip_addresses.begin_create_or_update(
        RG,
        "pip",
        {
            "location": LOCATION,
            "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static"},
        },
    ).result()
    assert public_ip.ip_address and public_ip.public_ip_allocation_method == "Static"
    nic = make_nic(
        network, "nic", subnet_id, public_ip=public_ip.id, networkSecurityGroup={"id": nsg.id}
    )
    config = nic.ip_configurations[0]
    # one emulated VM, one address: the NIC answers on its public IP's
    assert config.private_ip_address == public_ip.ip_address
    assert config.public_ip_address.id == public_ip.id
    assert network.public_ip_addresses.get(RG, "pip").ip_configuration.id == config.id
    assert [n.id for n in network.network_security_groups.get(RG, "nsg").network_interfaces] == [
        nic.id
    ]
    assert [c.id for c in network.subnets.get(RG, "vnet", "default").ip_configurations] == [
        config.id
    ]

    for delete, code in (
        (lambda: network.public_ip_addresses.begin_delete(RG, "pip"), "PublicIPAddressInUse"),
        (
            lambda: network.network_security_groups.begin_delete(RG, "nsg"),
            "InUseNetworkSecurityGroupCannotBeDeleted",
        ),
        (lambda: network.virtual_networks.begin_delete(RG, "vnet"), "InUseSubnetCannotBeDeleted"),
    ):
        with pytest.raises(HttpResponseError) as err:
            delete().result()
        assert (err.value.status_code, error_code(err.value)) == (400, code)

    network.network_interfaces.begin_delete(RG, "nic").result()
    network.public_ip_addresses.begin_delete(RG, "pip").result()
    # both addresses are back in the pool: the public IP's, and the one the NIC was given
    # before it took the public IP's
    returned = list(emulator.state.addresses._returned)
    assert public_ip.ip_address in returned and len(returned) == 2
    network.network_security_groups.begin_delete(RG, "nsg").result()
    network.virtual_networks.begin_delete(RG, "vnet").result()
    assert list(network.public_ip_addresses.list(RG)) == []
    assert list(network.network_security_groups.list_all()) == []
    with pytest.raises(ResourceNotFoundError):
        network.public_ip_addresses.get(RG, "pip")


def test_a_nic_on_a_missing_subnet_or_public_ip_is_refused(network: Any) -> None:
    vnet = make_vnet(network)
    for name, subnet_id, extra in (
        ("nic1", vnet.id + "/subnets/absent", {}),
        (
            "nic2",
            vnet.subnets[0].id,
            {"public_ip": vnet.id.replace("virtualNetworks/vnet", "publicIPAddresses/none")},
        ),
    ):
        with pytest.raises(HttpResponseError) as err:
            make_nic(network, name, subnet_id, **extra)
        assert (err.value.status_code, error_code(err.value)) == (400, "InvalidResourceReference")
    # a network the emulator was never told of is taken on trust (templates name one)
    unknown = vnet.id.replace("/vnet", "/elsewhere") + "/subnets/subnet"
    assert make_nic(network, "nic3", unknown).provisioning_state == "Succeeded"


def make_vm(compute: Any, network: Any, vm_name: str, **os_disk: Any) -> Any:
    nic = make_nic(network, f"{vm_name}-nic", make_vnet(network).subnets[0].id)
    return compute.virtual_machines.begin_create_or_update(
        RG,
        vm_name,
        {
            "location": LOCATION,
            "properties": {
                "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
                "storageProfile": {
                    "imageReference": {
                        "publisher": "Canonical",
                        "offer": "ubuntu-24_04-lts",
                        "sku": "server",
                        "version": "latest",
                    },
                    "osDisk": {"createOption": "FromImage", "diskSizeGB": 50, **os_disk},
                },
                "osProfile": {"computerName": vm_name, "adminUsername": "azuser"},
                "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
            },
        },
    ).result()


def test_a_vms_os_disk_is_a_managed_disk_that_outlives_it(compute: Any, network: Any) -> None:
    vm = make_vm(compute, network, "vm1")
    [disk] = compute.disks.list_by_resource_group(RG)
    assert disk.name == vm.storage_profile.os_disk.name and disk.name.startswith("vm1_OsDisk_1_")
    assert disk.id.lower() == vm.storage_profile.os_disk.managed_disk.id.lower()
    assert (disk.managed_by, disk.disk_state, disk.disk_size_gb) == (vm.id, "Attached", 50)
    assert [d.name for d in compute.disks.list()] == [disk.name]

    with pytest.raises(HttpResponseError) as err:
        compute.disks.begin_delete(RG, disk.name).result()
    assert (err.value.status_code, error_code(err.value)) == (409, "OperationNotAllowed")

    compute.virtual_machines.begin_delete(RG, "vm1").result()
    left = compute.disks.get(RG, disk.name)
    assert (left.managed_by, left.disk_state) == (None, "Unattached")
    compute.disks.begin_delete(RG, disk.name).result()
    assert list(compute.disks.list_by_resource_group(RG)) == []
    with pytest.raises(ResourceNotFoundError):
        compute.disks.get(RG, disk.name)


def test_an_os_disk_with_delete_option_delete_goes_with_its_vm(compute: Any, network: Any) -> None:
    make_vm(compute, network, "vm2", name="vm2-os", deleteOption="Delete")
    assert [d.name for d in compute.disks.list_by_resource_group(RG)] == ["vm2-os"]
    compute.virtual_machines.begin_delete(RG, "vm2").result()
    assert list(compute.disks.list_by_resource_group(RG)) == []


def test_an_empty_disk_is_made_listed_and_deleted(compute: Any) -> None:
    disk = compute.disks.begin_create_or_update(
        RG,
        "data1",
        {
            "location": LOCATION,
            "properties": {"creationData": {"createOption": "Empty"}, "diskSizeGB": 8},
        },
    ).result()
    assert (disk.disk_state, disk.disk_size_gb, disk.managed_by) == ("Unattached", 8, None)
    compute.disks.begin_delete(RG, "data1").result()
    assert list(compute.disks.list()) == []


def test_a_body_with_the_sdks_snake_case_names_is_refused_as_by_arm(network: Any) -> None:
    # azure-mgmt-network 31+ sends a plain dict as it is: ARM does not know these names
    with pytest.raises(HttpResponseError) as err:
        network.public_ip_addresses.begin_create_or_update(
            RG, "pip", {"location": LOCATION, "public_ip_allocation_method": "Static"}
        ).result()
    assert (err.value.status_code, error_code(err.value)) == (400, "InvalidRequestContent")
    assert "Could not find member 'public_ip_allocation_method'" in str(err.value)
    assert list(network.public_ip_addresses.list(RG)) == []


def test_a_nic_that_drops_its_public_ip_takes_an_address_of_its_own(
    network: Any, emulator: Emulator
) -> None:
    subnet_id = make_vnet(network).subnets[0].id
    public_ip = network.public_ip_addresses.begin_create_or_update(
        RG,
        "pip2",
        {
            "location": LOCATION,
            "sku": {"name": "Standard"},
            "properties": {"publicIPAllocationMethod": "Static"},
        },
    ).result()
    with_ip = make_nic(network, "nic2", subnet_id, public_ip=public_ip.id)
    assert with_ip.ip_configurations[0].private_ip_address == public_ip.ip_address
    without = make_nic(network, "nic2", subnet_id)  # the same NIC, its public IP dropped
    own = without.ip_configurations[0].private_ip_address
    assert own != public_ip.ip_address
    network.network_interfaces.begin_delete(RG, "nic2").result()
    network.public_ip_addresses.begin_delete(RG, "pip2").result()
    returned = list(emulator.state.addresses._returned)
    assert own in returned and public_ip.ip_address in returned
