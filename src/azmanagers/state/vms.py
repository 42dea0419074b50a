"""Detached VM records: where a VM's service listens, its pinned certificate and its token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from azmanagers.state.records import Kind

VM_STATUSES = ("creating", "booting", "up", "failed", "deleting")
"""``creating``: written before the cloud call; ``booting``: the VM exists, its service does
not answer yet; ``up``: it answered; ``failed``: it never did (kept so that rmproc can delete
it); ``deleting``: rmproc is under way."""


@dataclass(frozen=True)
class VMRecord:
    """A VM running the detached service, as the caller records it (the token included:
    the file is 0600)."""

    name: str
    template: str
    provider: str
    host: str
    port: int
    cert: str = field(repr=False)
    fingerprint: str = field(repr=False)
    token: str = field(repr=False)
    created_at: float = 0.0
    status: str = "up"
    updated_at: float = 0.0


def _from_unversioned(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (``asdict(DetachedVM)`` with no kind, version or status): a VM recorded
    by a version before the state store, which saved it once the VM existed."""
    data.setdefault("status", "up")
    data.setdefault("updated_at", float(data.get("created_at") or 0.0))
    return data


DETACHED_VMS = Kind(
    name="detached",
    schema_version=1,
    statuses=VM_STATUSES,
    upgrades={0: _from_unversioned},
    description="detached VM",
)
"""Detached VM records: ``state/detached/<name>.json`` (the path versions before it used)."""
