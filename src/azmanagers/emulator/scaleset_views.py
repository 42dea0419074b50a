"""How ARM shows a scale set and its VMs: the model with what Azure adds, instance views."""

from __future__ import annotations

import copy
from typing import Any

from azmanagers.emulator.scalesets import COMPUTE, ArmState, ScaleSet, ScaleSetVM
from azmanagers.emulator.shapes import computer_name, member_profiles, public_os_profile
from azmanagers.emulator.views import iso, statuses


def vmss_view(scaleset: ScaleSet, state: str = "Succeeded") -> dict[str, Any]:
    """A scale set as ARM returns it: its model with the fields Azure adds, no passwords."""
    body = copy.deepcopy(scaleset.body)
    body["id"] = scaleset.id
    body["name"] = scaleset.name
    body["type"] = f"{COMPUTE}/virtualMachineScaleSets"
    body["etag"] = f'"{scaleset.generation}"'
    props = body.setdefault("properties", {})
    props["provisioningState"] = state
    props["uniqueId"] = scaleset.unique_id
    props["timeCreated"] = iso(scaleset.created_at)
    props.setdefault("orchestrationMode", "Flexible" if scaleset.flexible else "Uniform")
    if scaleset.flexible:
        props["singlePlacementGroup"] = False
    else:
        props.setdefault("singlePlacementGroup", True)
    model = props.get("virtualMachineProfile")
    if isinstance(model, dict) and isinstance(model.get("osProfile"), dict):
        model["osProfile"] = public_os_profile(model["osProfile"])
    return body


def host_name(scaleset: ScaleSet, vm: ScaleSetVM) -> str:
    """A scale set's VM's computer name: the prefix and the index in Uniform mode (Azure's
    ``computerNamePrefix`` + 6 base-36 digits), the VM's name in Flexible mode."""
    if scaleset.flexible:
        return vm.name
    profile = scaleset.body.get("properties", {}).get("virtualMachineProfile") or {}
    prefix = (profile.get("osProfile") or {}).get("computerNamePrefix") or scaleset.name
    return computer_name(str(prefix), vm.seq)


def _member_properties(scaleset: ScaleSet, vm: ScaleSetVM, vm_id: str) -> dict[str, Any]:
    """A scale set's VM's profiles, from the scale set's model."""
    profile = scaleset.body.get("properties", {}).get("virtualMachineProfile") or {}
    computer = host_name(scaleset, vm)
    if scaleset.flexible:
        disk = f"{vm.name}_OsDisk_1_{vm.vm_id.replace('-', '')}"
    else:
        disk = f"{scaleset.name}_{scaleset.name}_{vm.instance_id}_OsDisk_1_" + vm.vm_id.replace(
            "-", ""
        )
    disk_id = (
        f"/subscriptions/{scaleset.sub}/resourceGroups/{scaleset.rg}/providers/{COMPUTE}/disks/"
        f"{disk}"
    )
    size = str(scaleset.body.get("sku", {}).get("name", ""))
    props = {"vmId": vm.vm_id, **member_profiles(profile, size, computer, disk, disk_id)}
    if not scaleset.flexible:
        configs = (profile.get("networkProfile") or {}).get("networkInterfaceConfigurations") or []
        props["networkProfile"] = {
            "networkInterfaces": [{"id": f"{vm_id}/networkInterfaces/{c['name']}"} for c in configs]
        }
        props["networkProfileConfiguration"] = {
            "networkInterfaceConfigurations": copy.deepcopy(configs)
        }
        props["modelDefinitionApplied"] = "VirtualMachineScaleSet"
    return props


def vm_view(state: ArmState, scaleset: ScaleSet, vm: ScaleSetVM, expand: bool) -> dict[str, Any]:
    """A scale set's VM as ARM shows it: a scale-set VM (Uniform) or a VM (Flexible)."""
    if expand and state.runner is not None and vm.power_state == "running":
        vm.power_state = state.runner.power_state(vm.vm_id)
    if scaleset.flexible:
        vm_id = (
            f"/subscriptions/{scaleset.sub}/resourceGroups/{scaleset.rg}/providers/"
            f"{COMPUTE}/virtualMachines/{vm.name}"
        )
    else:
        vm_id = f"{scaleset.id}/virtualMachines/{vm.instance_id}"
    props: dict[str, Any] = {
        "provisioningState": vm.provisioning_state,
        "latestModelApplied": True,
        "timeCreated": iso(vm.created_at),
        **_member_properties(scaleset, vm, vm_id),
    }
    if expand:
        props["instanceView"] = {
            "statuses": statuses(vm.provisioning_state, vm.power_state, vm.created_at)
        }
    if scaleset.flexible:
        props["priority"] = vm.priority
        props["virtualMachineScaleSet"] = {"id": scaleset.id}
        return {
            "id": vm_id,
            "name": vm.name,
            "type": f"{COMPUTE}/virtualMachines",
            "location": scaleset.body.get("location", ""),
            "properties": props,
        }
    sku = scaleset.body.get("sku", {})
    return {
        "id": vm_id,
        "name": vm.name,
        "instanceId": vm.instance_id,
        "type": f"{COMPUTE}/virtualMachineScaleSets/virtualMachines",
        "location": scaleset.body.get("location", ""),
        "tags": copy.deepcopy(scaleset.body.get("tags") or {}),
        "sku": {"name": sku.get("name", ""), "tier": sku.get("tier", "Standard")},
        "etag": f'"{scaleset.generation}"',
        "properties": props,
    }
