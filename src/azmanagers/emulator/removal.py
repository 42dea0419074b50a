"""Deleting as Azure does: a VM with what goes with it, a resource group with all it holds."""

from __future__ import annotations

from typing import Any

from azmanagers.emulator.scalesets import ArmState, remove_instance
from azmanagers.emulator.shapes import attach_nic, id_parts, network_etag

DISKS = "microsoft.compute/disks"


def key_of(resource_id: str) -> tuple[str, str, str]:
    """The lower-case (subscription, group, name) of an ARM resource id."""
    parts = id_parts(resource_id)
    name = resource_id.strip("/").rsplit("/", 1)[-1]
    sub, rg = parts.get("subscriptions", ""), parts.get("resourcegroups", "")
    return (sub.lower(), rg.lower(), name.lower())


def release_addresses(state: ArmState, body: dict[str, Any]) -> None:
    """Give back the loopback addresses a deleted NIC or public IP held (lock held): a public
    IP's own, a NIC's private ones except those it took from a public IP."""
    props = body.get("properties") or {}
    if str(body.get("type", "")).lower() == "microsoft.network/publicipaddresses":
        if props.get("ipAddress"):
            state.addresses.give_back(str(props["ipAddress"]))
        return
    for config in props.get("ipConfigurations") or []:
        settings = config.get("properties") or {}
        if settings.get("privateIPAddress") and not settings.get("publicIPAddress"):
            state.addresses.give_back(str(settings["privateIPAddress"]))


def remove_vm(state: ArmState, key: tuple[str, str, str]) -> dict[str, Any] | None:
    """Delete a stand-alone VM (lock held): stop its process-VM; delete its NICs and OS disk
    when their ``deleteOption`` is Delete, else detach them. Return what was stored, or None."""
    vm = state.vms.pop(key, None)
    if vm is None:
        return None
    body = vm["body"]
    props = body.get("properties") or {}
    for ref in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
        nic_key = key_of(str(ref.get("id", "")))
        if (ref.get("properties") or {}).get("deleteOption") == "Delete":
            if nic_key in state.nics:
                release_addresses(state, state.nics.pop(nic_key))
        elif nic_key in state.nics:
            attach_nic(state.nics[nic_key], None)
            state.nics[nic_key]["etag"] = network_etag()
    os_disk = (props.get("storageProfile") or {}).get("osDisk") or {}
    disk_id = str((os_disk.get("managedDisk") or {}).get("id", ""))
    if disk_id:
        sub, rg, name = key_of(disk_id)
        disk_key = (sub, rg, DISKS, name)
        if os_disk.get("deleteOption") == "Delete":
            state.others.pop(disk_key, None)
        elif disk_key in state.others:
            disk = state.others[disk_key]
            disk["managedBy"] = None
            disk.setdefault("properties", {})["diskState"] = "Unattached"
    if state.runner is not None:
        state.runner.stop(str(props.get("vmId", "")))
    return vm


def remove_group(state: ArmState, sub: str, rg: str) -> dict[str, Any] | None:
    """Delete a resource group and everything in it (lock held); None if there is none."""
    sub, rg = sub.lower(), rg.lower()
    group = state.groups.pop((sub, rg), None)
    if group is None:
        return None
    for key in [k for k in state.scalesets if k[:2] == (sub, rg)]:
        scaleset = state.scalesets.pop(key)
        for instance_id in list(scaleset.vms):
            remove_instance(state, scaleset, instance_id)
    for key in [k for k in state.vms if k[:2] == (sub, rg)]:
        remove_vm(state, key)
    for key in [k for k in state.nics if k[:2] == (sub, rg)]:
        release_addresses(state, state.nics.pop(key))
    for other in [k for k in state.others if k[:2] == (sub, rg)]:
        release_addresses(state, state.others.pop(other))
    return group
