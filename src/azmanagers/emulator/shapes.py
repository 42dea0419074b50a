"""Fields Azure adds to what it stores: ids, etags, vmIds, NIC and OS-disk shapes, merges."""

from __future__ import annotations

import copy
import secrets
import uuid
from typing import Any

from azmanagers.emulator.views import iso

SECRET_OS_FIELDS = ("adminPassword", "customData")
"""osProfile fields Azure takes and never gives back (custom data is write-only, unlike
``userData``, which ``$expand=userData`` returns)."""
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def id_parts(resource_id: str) -> dict[str, str]:
    """An ARM id's segments as a lower-case-keyed map (``subscriptions`` -> sub, ...)."""
    segments = resource_id.strip("/").split("/")
    return {segments[i].lower(): segments[i + 1] for i in range(0, len(segments) - 1, 2)}


def deep_merge(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``stored`` as ARM does for a PUT on an existing scale set: objects
    merge key by key, anything else (lists included) replaces."""
    merged = copy.deepcopy(stored)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_put(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A PUT (or PATCH) on an existing scale set: ``update`` laid over ``stored`` by
    ``deep_merge``, except ``tags``, which, when given, replace the whole tag set (ARM)."""
    merged = deep_merge(stored, {k: v for k, v in update.items() if k != "tags"})
    if "tags" in update:
        merged["tags"] = copy.deepcopy(update["tags"])
    return merged


def new_uuid() -> str:
    """A fresh identifier (vmId, uniqueId, resourceGuid)."""
    return str(uuid.uuid4())


def network_etag() -> str:
    """A network resource's etag: a weak one, new at each change."""
    return f'W/"{uuid.uuid4()}"'


def mac_address() -> str:
    """A MAC address as Azure writes one (Microsoft's 00-0D-3A prefix, dashes, upper case)."""
    return "00-0D-3A-" + "-".join(f"{b:02X}" for b in secrets.token_bytes(3))


def computer_name(prefix: str, index: int) -> str:
    """A Uniform scale-set instance's host name: the prefix and the index in base 36, 6 digits."""
    digits = ""
    while True:
        index, rest = divmod(index, 36)
        digits = _BASE36[rest] + digits
        if index == 0:
            return prefix + digits.rjust(6, "0")


def public_os_profile(os_profile: dict[str, Any]) -> dict[str, Any]:
    """An osProfile as Azure returns it: passwords gone, ``secrets`` always listed."""
    shown = {k: copy.deepcopy(v) for k, v in os_profile.items() if k not in SECRET_OS_FIELDS}
    shown.setdefault("secrets", [])
    return shown


def fill_storage_profile(storage: dict[str, Any], os_disk_name: str, os_disk_id: str) -> None:
    """Add what Azure fills in a VM's storage profile: the OS disk's type, name and managed-disk
    id, and an empty ``dataDisks``."""
    os_disk = storage.setdefault("osDisk", {})
    os_disk.setdefault("osType", "Linux")
    os_disk.setdefault("createOption", "FromImage")
    os_disk.setdefault("name", os_disk_name)
    if "vhd" not in os_disk:
        managed = os_disk.setdefault("managedDisk", {})
        managed.setdefault("storageAccountType", "Premium_LRS")
        managed["id"] = os_disk_id
    storage.setdefault("dataDisks", [])


def os_disk_name(vm_name: str) -> str:
    """The name Azure gives a VM's OS disk when the request names none."""
    return f"{vm_name}_OsDisk_1_{secrets.token_hex(16)}"


def os_disk_record(
    disk_id: str, vm: dict[str, Any], image: dict[str, Any], created_at: float
) -> dict[str, Any]:
    """The managed disk (``Microsoft.Compute/disks``) made for a VM's OS disk, attached to it."""
    os_disk = vm["properties"]["storageProfile"]["osDisk"]
    return {
        "id": disk_id,
        "name": disk_id.rsplit("/", 1)[-1],
        "type": "Microsoft.Compute/disks",
        "location": vm["location"],
        "tags": {},
        "managedBy": vm["id"],
        "sku": {"name": os_disk["managedDisk"]["storageAccountType"], "tier": "Premium"},
        "properties": {
            "osType": os_disk["osType"],
            "hyperVGeneration": "V2",
            "creationData": {"createOption": "FromImage", "imageReference": copy.deepcopy(image)},
            "diskSizeGB": int(os_disk.get("diskSizeGB") or 30),
            "diskState": "Attached",
            "provisioningState": "Succeeded",
            "timeCreated": iso(created_at),
            "uniqueId": new_uuid(),
        },
    }


def fill_nic(nic: dict[str, Any], address: str) -> None:
    """Add what Azure fills in a stored NIC: its etag and guid, and in each ipConfiguration
    the id, etag, type, primary flag, address, allocation method, version and state."""
    etag = network_etag()
    nic["etag"] = etag
    props = nic.setdefault("properties", {})
    props.setdefault("resourceGuid", new_uuid())
    props["provisioningState"] = "Succeeded"
    props.setdefault("dnsSettings", {"dnsServers": [], "appliedDnsServers": []})
    props.setdefault("enableAcceleratedNetworking", False)
    props.setdefault("enableIPForwarding", False)
    props.setdefault("nicType", "Standard")
    configs = props.get("ipConfigurations") or []
    for index, config in enumerate(configs):
        name = str(config.get("name") or f"ipconfig{index + 1}")
        config["name"] = name
        config["id"] = f"{nic['id']}/ipConfigurations/{name}"
        config["etag"] = etag
        config["type"] = "Microsoft.Network/networkInterfaces/ipConfigurations"
        settings = config.setdefault("properties", {})
        settings["privateIPAddress"] = address
        settings.setdefault("privateIPAllocationMethod", "Dynamic")
        settings.setdefault("privateIPAddressVersion", "IPv4")
        settings.setdefault("primary", index == 0)
        settings["provisioningState"] = "Succeeded"


def attach_nic(nic: dict[str, Any], vm_id: str | None) -> None:
    """Record (or, with None, clear) the VM a NIC serves, as Azure shows it on the NIC."""
    props = nic["properties"]
    if vm_id is None:
        props.pop("virtualMachine", None)
        return
    props["virtualMachine"] = {"id": vm_id}
    props.setdefault("macAddress", mac_address())
    props["primary"] = True


def member_profiles(
    profile: dict[str, Any], vm_size: str, computer: str, disk_name: str, disk_id: str
) -> dict[str, Any]:
    """A scale set's VM's hardware, storage and OS profiles, from the scale set's model: its
    own host name, its own OS disk, no custom data and no password."""
    storage = copy.deepcopy(profile.get("storageProfile") or {})
    storage.get("osDisk", {}).pop("name", None)
    fill_storage_profile(storage, disk_name, disk_id)
    model_os = profile.get("osProfile") or {}
    os_profile: dict[str, Any] = {"computerName": computer}
    for key in ("adminUsername", "linuxConfiguration", "windowsConfiguration"):
        if key in model_os:
            os_profile[key] = copy.deepcopy(model_os[key])
    os_profile.update(secrets=[], allowExtensionOperations=True, requireGuestProvisionSignal=True)
    return {
        "hardwareProfile": {"vmSize": vm_size},
        "storageProfile": storage,
        "osProfile": os_profile,
    }
