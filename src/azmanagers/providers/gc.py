"""Garbage collection: delete what a killed caller left behind, found by exact tag."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from azmanagers.errors import AzManagersError, ProviderError
from azmanagers.providers.base import OwnedResource, Provider
from azmanagers.providers.local.provider import LocalProvider
from azmanagers.providers.tags import DETACHED_OWNER, TAG_CLUSTER, TAG_OWNER, is_expired

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
    detached = resource.tags.get(TAG_OWNER) == DETACHED_OWNER  # meant to outlive its caller
    if not resource.owner_alive and not detached:
        return "its owner process is gone"
    if is_expired(resource.tags):
        return "its azmanagers-expires tag has passed"
    return None


def providers_to_collect() -> list[Provider]:
    """Return the local provider and one azure provider per place we may have resources.

    The places are the subscriptions and resource groups of the saved Azure scale-set
    templates and of the manifest (when there is one).
    """
    from azmanagers.config.manifest import load_manifest, manifest_path
    from azmanagers.config.templates import list_templates, template_provider

    places: set[tuple[str, str]] = set()
    manifest = load_manifest() if manifest_path().exists() else None
    for template in list_templates("scaleset").values():
        if template_provider(template) != "azure":
            continue
        sub = str(template.get("subscriptionid") or (manifest.subscriptionid if manifest else ""))
        group = str(template.get("resourcegroup") or (manifest.resourcegroup if manifest else ""))
        if sub and group:
            places.add((sub, group))
    if manifest is not None:
        places.add((manifest.subscriptionid, manifest.resourcegroup))
    found: list[Provider] = [LocalProvider()]
    if places:
        from azmanagers.providers.azure.provider import AzureProvider

        found += [AzureProvider(sub, group) for sub, group in sorted(places)]
    return found


def gc(*, dry_run: bool = False, cluster: str | None = None) -> list[Collected]:
    """Find our orphaned or expired resources by their tags and delete them.

    Looks on this machine (local pools) and, for the azure provider, in every subscription
    and resource group named by a saved template or the manifest. A provider that fails is
    reported and the others are still collected.

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

    Raises
    ------
    ProviderError
        After collecting what it could, when a provider failed (the message names it).
    """
    found: list[Collected] = []
    failed: list[str] = []
    for provider in providers_to_collect():
        try:
            found += _collect(provider, dry_run=dry_run, cluster=cluster)
        except AzManagersError as exc:
            failed.append(f"{provider.name}: {exc}")
    if failed:
        raise ProviderError("gc could not finish: " + "; ".join(failed))
    return found


def _collect(provider: Provider, *, dry_run: bool, cluster: str | None) -> list[Collected]:
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
