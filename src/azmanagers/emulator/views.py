"""Instance views as Azure shows them: statuses with their code, level, display text and time."""

from __future__ import annotations

import datetime
from typing import Any

POWER_TEXT = {
    "running": "VM running",
    "starting": "VM starting",
    "stopping": "VM stopping",
    "stopped": "VM stopped",
    "deallocating": "VM deallocating",
    "deallocated": "VM deallocated",
}


def iso(timestamp: float) -> str:
    """An epoch time as ARM writes it (ISO 8601, UTC)."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def provisioning_status(state: str, since: float) -> dict[str, Any]:
    """``ProvisioningState/<state>``, as an instance view lists it."""
    state = state.lower()
    return {
        "code": f"ProvisioningState/{state}",
        "level": "Error" if state == "failed" else "Info",
        "displayStatus": f"Provisioning {state}",
        "time": iso(since),
    }


def statuses(provisioning: str, power: str, since: float) -> list[dict[str, Any]]:
    """A VM's instance-view statuses: its provisioning state (with a time) and power state
    (without one, as Azure gives it)."""
    return [
        provisioning_status(provisioning, since),
        {
            "code": f"PowerState/{power}",
            "level": "Info",
            "displayStatus": POWER_TEXT.get(power, f"VM {power}"),
        },
    ]


def summary(codes: list[str]) -> list[dict[str, Any]]:
    """A scale set's ``statusesSummary``: how many instances have each code."""
    counts: dict[str, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return [{"code": code, "count": count} for code, count in sorted(counts.items())]
