"""A regular/spot mix needs a scale set in Flexible orchestration mode; what that changes.

Azure's ``priorityMixPolicy`` (a base of regular VMs, then a percentage of regular VMs
above it, the rest spot) exists only in Flexible mode. There the scale set's VMs are
ordinary ``virtualMachines`` named ``<scale set>_<8 hex>``: they are listed through the
VM list filtered on the scale set's id (the scale-set VM list takes numeric instance ids
only), and deleted in one batch by name.
"""

from __future__ import annotations

from typing import Any

from azmanagers.providers.base import Priority

NETWORK_API_VERSION = "2020-11-01"
"""The network API version a Flexible scale set's VM profile must name to create NICs."""
_UNIFORM_ONLY = ("upgradePolicy", "overprovision", "doNotRunExtensionsOnOverprovisionedVMs")
SPOT_QUOTA = "lowPriorityCores"
"""The usage name of a region's spot (low-priority) vCPU quota."""


def make_flexible(body: dict[str, Any], priority: Priority) -> None:
    """Turn a scale-set body (the Uniform template) into Flexible mode with ``priority``'s mix."""
    props = body.setdefault("properties", {})
    for key in _UNIFORM_ONLY:
        props.pop(key, None)
    props["orchestrationMode"] = "Flexible"
    props.setdefault("platformFaultDomainCount", 1)
    props["singlePlacementGroup"] = False
    props["priorityMixPolicy"] = {
        "baseRegularPriorityCount": priority.regular_base,
        "regularPriorityPercentageAboveBase": priority.regular_percentage_above_base,
    }
    profile = props.setdefault("virtualMachineProfile", {})
    network = profile.setdefault("networkProfile", {})
    network["networkApiVersion"] = NETWORK_API_VERSION


def is_flexible(orchestration_mode: Any) -> bool:
    """True for a scale set whose ``orchestrationMode`` is Flexible (an SDK enum or a str)."""
    return str(getattr(orchestration_mode, "value", orchestration_mode) or "").lower() == (
        "flexible"
    )


def vm_filter(subscription: str, resource_group: str, pool: str) -> str:
    """The ``$filter`` that lists a Flexible scale set's VMs in one call."""
    scaleset_id = (
        f"/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
        f"Microsoft.Compute/virtualMachineScaleSets/{pool}"
    )
    return f"'virtualMachineScaleSet/id' eq '{scaleset_id}'"


def split(priority: Priority, current: int, add: int) -> tuple[int, int]:
    """How many of ``add`` new instances (``current`` exist) are regular, and how many spot."""
    if not priority.spot:
        return add, 0
    regular = priority.regular_count(current + add) - priority.regular_count(current)
    return regular, add - regular
