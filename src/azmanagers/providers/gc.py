"""Garbage collection: delete what a killed caller left behind, found by exact tag."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from azmanagers.errors import NotFoundError, ProviderError
from azmanagers.providers.base import OwnedResource, Provider
from azmanagers.providers.tags import (
    DETACHED_OWNER,
    NAMED_OWNER,
    TAG_CLUSTER,
    TAG_OWNER,
    is_expired,
)

logger = logging.getLogger("azmanagers.gc")


@dataclass(frozen=True)
class Collected:
    """One resource ``gc`` found, and why it is (or would be) deleted."""

    provider: str
    kind: str
    name: str
    cluster: str
    reason: str


@dataclass(frozen=True)
class NotCollected:
    """Something ``gc`` could not read, list or delete, with its file when there is one.

    Attributes
    ----------
    what : str
        What could not be collected, e.g. "the manifest", "scale-set template 'x'",
        "local pools", "azure pool p1".
    file : str
        The file involved ("" when the problem is not a file's, e.g. a refused cloud call).
    error : str
        Why, and what to do.
    """

    what: str
    file: str
    error: str


@dataclass(frozen=True)
class GcReport:
    """What one ``gc`` pass collected and what it could not."""

    dry_run: bool
    collected: list[Collected] = field(default_factory=list)
    not_collected: list[NotCollected] = field(default_factory=list)


@dataclass(frozen=True)
class _Place:
    """A provider to collect from, and how to name it in a report."""

    label: str
    provider: Provider


def _reason(resource: OwnedResource) -> str | None:
    # meant to outlive its caller
    detached = resource.tags.get(TAG_OWNER) in (DETACHED_OWNER, NAMED_OWNER)
    if not resource.owner_alive and not detached:
        return "its owner process is gone"
    if is_expired(resource.tags):
        return "its azmanagers-expires tag has passed"
    return None


def _azure_places(problems: list[NotCollected]) -> set[tuple[str, str]]:
    """Return the (subscription, resource group) pairs named by the manifest and templates.

    What cannot be read is added to ``problems`` (with its file) and skipped.
    """
    from azmanagers.config.manifest import load_manifest, manifest_path
    from azmanagers.config.templates import list_templates, template_provider, templates_path

    places: set[tuple[str, str]] = set()
    manifest = None
    if manifest_path().exists():
        try:
            manifest = load_manifest()
        except Exception as exc:  # one unreadable file must not stop gc
            problems.append(NotCollected("the manifest", str(manifest_path()), str(exc)))
    try:
        templates = list_templates("scaleset")
    except Exception as exc:  # one unreadable file must not stop gc
        problems.append(
            NotCollected("scale-set templates", str(templates_path("scaleset")), str(exc))
        )
        templates = {}
    for name, template in templates.items():
        try:
            if template_provider(template) != "azure":
                continue
        except Exception as exc:  # one bad template must not stop gc
            what = f"scale-set template {name!r}"
            problems.append(NotCollected(what, str(templates_path("scaleset")), str(exc)))
            continue
        sub = template.get("subscriptionid") or (manifest.subscriptionid if manifest else "")
        group = template.get("resourcegroup") or (manifest.resourcegroup if manifest else "")
        unusable = _unusable_place(sub, group)
        if unusable:  # never sent to Azure: it cannot name a place of ours
            what = f"scale-set template {name!r}"
            problems.append(NotCollected(what, str(templates_path("scaleset")), unusable))
        elif sub and group:
            places.add((sub, group))
    if manifest is not None:
        places.add((manifest.subscriptionid, manifest.resourcegroup))
    return places


def _unusable_place(sub: object, group: object) -> str:
    """Return why a template's subscription and resource group cannot be used ('' if they can)."""
    from azmanagers.config.manifest import GUID_RE, RESOURCE_GROUP_RE

    if not isinstance(sub, str) or (sub and not GUID_RE.fullmatch(sub)):
        return (
            f"its subscriptionid {sub!r} is not a GUID, so gc does not call Azure for it. "
            "Fix the template (`az account show --query id` gives the id) or remove it."
        )
    if not isinstance(group, str) or (group and not RESOURCE_GROUP_RE.fullmatch(group)):
        return (
            f"its resourcegroup {group!r} is not a resource group name Azure takes, so gc "
            "does not call Azure for it. Fix the template or remove it."
        )
    return ""


def _places(problems: list[NotCollected]) -> list[_Place]:
    """Return the local provider and one azure provider per place we may have resources."""
    from azmanagers.providers import get_provider

    found: list[_Place] = []
    wanted: list[tuple[str, dict[str, str], str]] = [("local", {}, "local pools and VMs")]
    wanted += [
        (
            "azure",
            {"subscriptionid": sub, "resourcegroup": group},
            f"azure resources in subscription {sub}, resource group {group}",
        )
        for sub, group in sorted(_azure_places(problems))
    ]
    for name, place, label in wanted:
        try:
            found.append(_Place(label, get_provider(name, place)))
        except Exception as exc:  # one provider must not stop the others
            problems.append(NotCollected(label, "", str(exc)))
    return found


def collect(*, dry_run: bool = False, cluster: str | None = None) -> GcReport:
    """Find our orphaned or expired resources by their tags and delete what can be deleted.

    Looks on this machine (local pools and VMs) and, for the azure provider, in every
    subscription and resource group named by a saved template or the manifest. Nothing
    stops the pass: an unreadable file, a provider that fails, or a resource that cannot be
    deleted is reported in ``not_collected`` and everything else is still collected.

    Parameters
    ----------
    dry_run
        Only list what would be deleted.
    cluster
        Restrict to the resources whose ``azmanagers-cluster`` tag equals this exactly.

    Returns
    -------
    GcReport
        What was deleted (or would be) and what could not be collected, with its file.
    """
    report = GcReport(dry_run=dry_run)
    for place in _places(report.not_collected):
        _collect(place, report, cluster=cluster)
    return report


def gc(*, dry_run: bool = False, cluster: str | None = None) -> list[Collected]:
    """Find our orphaned or expired resources by their tags and delete them.

    Collects everything it can (see ``collect``) before it reports what it could not.

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
        After collecting what it could, when something could not be collected (the message
        names each thing, its file and the reason).
    """
    report = collect(dry_run=dry_run, cluster=cluster)
    if report.not_collected:
        raise ProviderError("gc could not collect everything: " + describe(report.not_collected))
    return report.collected


def describe(problems: list[NotCollected]) -> str:
    """Return ``problems`` as one line: ``what (file): error; ...``."""
    return "; ".join(f"{p.what}{f' ({p.file})' if p.file else ''}: {p.error}" for p in problems)


def _collect(place: _Place, report: GcReport, *, cluster: str | None) -> None:
    provider = place.provider
    try:
        resources = provider.list_owned_resources(cluster=cluster)
        unreadable = provider.list_unreadable_resources()
    except NotFoundError:  # e.g. a resource group that does not exist: nothing of ours there
        logger.info("gc: %s: not found, nothing to collect there", place.label)
        return
    except Exception as exc:  # one provider must not stop the others
        report.not_collected.append(NotCollected(place.label, "", str(exc)))
        return
    reported: dict[str, NotCollected] = {}
    for record in unreadable:  # whose it is cannot be told: reported, never deleted
        what = f"an unreadable {provider.name} record"
        reported[record.path] = NotCollected(what, record.path, record.reason)
        report.not_collected.append(reported[record.path])
    for resource in resources:
        reason = _reason(resource)
        if reason is None:
            continue
        found = Collected(
            provider=provider.name,
            kind=resource.kind,
            name=resource.name,
            cluster=resource.tags.get(TAG_CLUSTER, ""),
            reason=reason,
        )
        if not report.dry_run:
            logger.info("gc: deleting %s %s (%s)", resource.kind, resource.name, reason)
            try:
                provider.delete_owned_resource(resource)
            except Exception as exc:  # one resource must not stop the others
                _failed(report, reported, f"{provider.name} {resource.kind} {resource.name}", exc)
                continue
        report.collected.append(found)


def _failed(report: GcReport, reported: dict[str, NotCollected], what: str, exc: Exception) -> None:
    """Report a deletion that failed, with each unreadable record its message names.

    An unreadable record the deletion tripped on was reported before the deletion; its
    entry gives way to the deletion's, which says what was done and keeps the file.
    """
    message = str(exc)
    named = [path for path in reported if path in message]
    for path in named:
        report.not_collected.remove(reported.pop(path))
        report.not_collected.append(NotCollected(what, path, message))
    if not named:
        report.not_collected.append(NotCollected(what, "", message))
