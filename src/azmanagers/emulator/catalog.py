"""The emulator's small catalogue of VM sizes (SKUs) and its regional quotas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sku:
    """A VM size: its name, family and vCPU count."""

    name: str
    family: str
    vcpus: int


SKUS = (
    Sku("Standard_D2s_v3", "standardDSv3Family", 2),
    Sku("Standard_D4s_v3", "standardDSv3Family", 4),
    Sku("Standard_D8s_v3", "standardDSv3Family", 8),
    Sku("Standard_HB120rs_v3", "standardHBrsv3Family", 120),
    Sku("Standard_NC6s_v3", "standardNCSv3Family", 6),
)
SKUS_BY_NAME = {s.name.lower(): s for s in SKUS}
LOCATIONS = (
    "australiaeast",
    "australiasoutheast",
    "brazilsouth",
    "canadacentral",
    "canadaeast",
    "centralindia",
    "centralus",
    "eastasia",
    "eastus",
    "eastus2",
    "francecentral",
    "germanywestcentral",
    "israelcentral",
    "italynorth",
    "japaneast",
    "japanwest",
    "koreacentral",
    "mexicocentral",
    "northcentralus",
    "northeurope",
    "norwayeast",
    "polandcentral",
    "qatarcentral",
    "southafricanorth",
    "southcentralus",
    "southeastasia",
    "southindia",
    "spaincentral",
    "swedencentral",
    "switzerlandnorth",
    "uaenorth",
    "uksouth",
    "ukwest",
    "westcentralus",
    "westeurope",
    "westindia",
    "westus",
    "westus2",
    "westus3",
)
"""The Azure regions the emulator serves (public-cloud names, as ``az account list-locations``
gives them); each size is offered in each."""
UNZONED = frozenset(
    {
        "australiasoutheast",
        "canadaeast",
        "japanwest",
        "northcentralus",
        "southindia",
        "ukwest",
        "westcentralus",
        "westindia",
        "westus",
    }
)
"""Of those, the regions without availability zones."""
DEFAULT_FAMILY_LIMIT = 350
DEFAULT_REGIONAL_LIMIT = 1000


def sku_document(sku: Sku, location: str) -> dict[str, Any]:
    """The ARM shape of a resource SKU entry: one size in one location, with its zones."""
    zones = [] if location in UNZONED else ["1", "2", "3"]
    return {
        "resourceType": "virtualMachines",
        "name": sku.name,
        "tier": "Standard",
        "size": sku.name.removeprefix("Standard_"),
        "family": sku.family,
        "locations": [location],
        "locationInfo": [{"location": location, "zones": zones, "zoneDetails": []}],
        "capabilities": [
            {"name": "vCPUs", "value": str(sku.vcpus)},
            {"name": "LowPriorityCapable", "value": "True"},
        ],
        "restrictions": [],
    }


def usage_document(name: str, localized: str, current: int, limit: int) -> dict[str, Any]:
    """The ARM shape of one usage entry."""
    return {
        "unit": "Count",
        "currentValue": current,
        "limit": limit,
        "name": {"value": name, "localizedValue": localized},
    }
