"""Flexible orchestration in the emulator: the checks Azure makes, VM names and priorities.

A Flexible scale set's VMs are ``virtualMachines`` of their own, named
``<scale set>_<8 hex>``; its priority mix policy decides, VM by VM, which are regular and
which spot. The scale-set VM routes (numeric instance ids) do not serve them.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any

from azmanagers.emulator.server import ArmError

if TYPE_CHECKING:
    from azmanagers.emulator.scalesets import ScaleSet

NETWORK_API_VERSION = "2020-11-01"


def is_flexible(body: dict[str, Any]) -> bool:
    """True when a scale-set body asks for Flexible orchestration."""
    mode = str((body.get("properties") or {}).get("orchestrationMode") or "Uniform")
    return mode.lower() == "flexible"


def validate(body: dict[str, Any]) -> None:
    """Raise the ARM error Azure gives for a mix outside Flexible mode, or an incomplete
    Flexible body."""
    props = body.get("properties") or {}
    profile = props.get("virtualMachineProfile") or {}
    mix = props.get("priorityMixPolicy")
    if not is_flexible(body):
        if mix is not None:
            raise ArmError(
                400,
                "InvalidParameter",
                "priorityMixPolicy can be set only on a scale set with orchestrationMode Flexible.",
            )
        return
    if props.get("platformFaultDomainCount") is None:
        raise ArmError(
            400,
            "InvalidParameter",
            "platformFaultDomainCount is required for orchestrationMode Flexible.",
        )
    network = profile.get("networkProfile") or {}
    if network.get("networkInterfaceConfigurations") and (
        network.get("networkApiVersion") != NETWORK_API_VERSION
    ):
        raise ArmError(
            400,
            "InvalidParameter",
            f"networkProfile.networkApiVersion must be {NETWORK_API_VERSION} for a Flexible "
            "scale set that creates network interfaces.",
        )
    if mix is not None:
        if str(profile.get("priority", "Regular")).lower() != "spot":
            raise ArmError(
                400,
                "InvalidParameter",
                "priorityMixPolicy needs virtualMachineProfile.priority Spot.",
            )
        base = mix.get("baseRegularPriorityCount", 0)
        percentage = mix.get("regularPriorityPercentageAboveBase", 0)
        if not isinstance(base, int) or base < 0 or not 0 <= float(percentage) <= 100:
            raise ArmError(
                400,
                "InvalidParameter",
                "priorityMixPolicy: baseRegularPriorityCount must be >= 0 and "
                "regularPriorityPercentageAboveBase from 0 to 100.",
            )


def regular_count(body: dict[str, Any], total: int) -> int:
    """How many of ``total`` VMs the scale set's priority settings make regular."""
    props = body.get("properties") or {}
    profile = props.get("virtualMachineProfile") or {}
    if str(profile.get("priority", "Regular")).lower() != "spot":
        return total
    mix = props.get("priorityMixPolicy") or {}
    base = int(mix.get("baseRegularPriorityCount", 0))
    percentage = float(mix.get("regularPriorityPercentageAboveBase", 0))
    return min(total, base) + math.ceil(max(total - base, 0) * percentage / 100)


def next_priority(scaleset: ScaleSet) -> str:
    """The priority of the next VM: regular while the regular ones are short of the mix."""
    regular = sum(1 for vm in scaleset.vms.values() if vm.priority == "Regular")
    wanted = regular_count(scaleset.body, len(scaleset.vms) + 1)
    return "Regular" if regular < wanted else "Spot"


def vm_name(scaleset: ScaleSet) -> str:
    """A new Flexible VM's name: the scale set's name, an underscore and 8 hex digits."""
    while True:
        name = f"{scaleset.name}_{secrets.token_hex(4)}"
        if name not in scaleset.vms:
            return name


def parse_filter(text: str) -> str:
    """Return the scale-set id of ``'virtualMachineScaleSet/id' eq '<id>'`` (the one filter
    the VM list takes)."""
    prefix = "'virtualMachineScaleSet/id' eq '"
    stripped = text.strip()
    if not stripped.lower().startswith(prefix.lower()) or not stripped.endswith("'"):
        raise ArmError(
            400,
            "InvalidParameter",
            f"Unsupported $filter {text!r}: the allowed value is "
            "'virtualMachineScaleSet/id' eq '<scale set id>'.",
        )
    return stripped[len(prefix) : -1]
