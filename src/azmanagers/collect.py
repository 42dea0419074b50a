"""Garbage collection: delete what a killed caller left behind, found by exact tag."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from azmanagers.providers.base import TAG_CLUSTER, OwnedResource
from azmanagers.providers.local import LocalProvider, is_expired

logger = logging.getLogger("azmanagers.gc")


@dataclass(frozen=True)
class Collected:
    """One resource ``gc`` found, and why it is (or would be) deleted."""

    provider: str
    kind: str
    name: str
    cluster: str
    reason: str


def _reason(resource: OwnedResource) -> str | None:
    if not resource.owner_alive:
        return "its owner process is gone"
    if is_expired(resource):
        return "its azmanagers-expires tag has passed"
    return None


def gc(*, dry_run: bool = False, cluster: str | None = None) -> list[Collected]:
    """Find our orphaned or expired resources by their tags and delete them.

    Parameters
    ----------
    dry_run
        Only list what would be deleted.
    cluster
        Restrict to the resources whose ``azmanagers-cluster`` tag equals this exactly.

    Returns
    -------
    list of Collected
        What was deleted (or, with ``dry_run``, what would be).
    """
    provider = LocalProvider()
    found = []
    for resource in provider.list_owned_resources(cluster=cluster):
        reason = _reason(resource)
        if reason is None:
            continue
        found.append(
            Collected(
                provider=provider.name,
                kind=resource.kind,
                name=resource.name,
                cluster=resource.tags.get(TAG_CLUSTER, ""),
                reason=reason,
            )
        )
        if not dry_run:
            logger.info("gc: deleting %s %s (%s)", resource.kind, resource.name, reason)
            provider.delete_owned_resource(resource)
    return found
