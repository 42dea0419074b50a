"""Stop a named cluster: its pool, its head, then its record, each step recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from azmanagers.errors import AzManagersError, ConfigError, DetachedServiceError, ProviderError
from azmanagers.named.handle import STORE, NamedCluster, load_record, save_record
from azmanagers.named.wire import HEAD_STOP
from azmanagers.providers.base import Provider
from azmanagers.state.clusters import ClusterRecord

POOL_KINDS = ("pool", "scaleset")
"""What ``list_owned_resources`` calls a pool (local) and a scale set (azure)."""
HEAD_STOP_TIMEOUT_S = 300.0
"""How long the head may take to delete its pool when asked to stop."""

Progress = Callable[[str], None]


def providers_of(record: ClusterRecord) -> tuple[Provider, Provider]:
    """The providers of the cluster's pool and of its head, from the templates the record
    keeps (a record of an older start: from this machine's templates by name)."""
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import load_template_scaleset, load_template_vm
    from azmanagers.providers import get_provider

    try:
        pool_tmpl = _kept(record.pool_template_doc) or load_template_scaleset(record.template)
        head_tmpl = _kept(record.head_template_doc) or load_template_vm(record.head_template)
    except ConfigError as exc:
        raise ConfigError(
            f"cluster {record.name} was made from templates this machine no longer has: {exc}"
        ) from None
    return (
        get_provider(template_provider(pool_tmpl), pool_tmpl),
        get_provider(template_provider(head_tmpl), head_tmpl),
    )


def _kept(doc: str) -> dict[str, Any] | None:
    if not doc:
        return None
    try:
        value = json.loads(doc)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def stop_cluster(name: str, *, progress: Progress | None = None) -> None:
    """Delete the cluster's pool, its head VM (with its NIC) and its record, in that order.

    Each step is recorded, so a stop that was interrupted, or a ``start`` that crashed
    half-way, is finished by running ``stop`` again. An unreachable head does not stop it:
    the pool and the head are then deleted through the provider. Raises ``ProviderError``
    (the record kept, status ``stopping``) when something tagged with the cluster is left.
    """
    record = load_record(name)
    head_may_answer = record.status in ("up", "stopping") and bool(record.port and record.host)
    record = save_record(replace(record, status="stopping"))
    say = progress or (lambda _text: None)
    if head_may_answer:  # first: it needs no template nor cloud credential
        _ask_head_to_stop(record, say)
    pool_provider, head_provider = providers_of(record)
    say(f"cluster {name}: deleting its pool {record.pool}")
    pool_provider.delete_pool(record.pool)
    record = save_record(replace(record, step="pool-deleted"))
    say(f"cluster {name}: deleting its head {record.head}")
    head_provider.delete_vm(record.head)
    record = save_record(replace(record, step="head-deleted"))
    left = _leftovers(record, pool_provider, head_provider)
    if left:
        save_record(replace(record, reason=f"left behind: {', '.join(left)}"))
        raise ProviderError(
            f"cluster {name}: these resources tagged with it are still there: "
            f"{', '.join(left)}; run `azm cluster stop {name}` again, or `azm gc`."
        )
    STORE.delete(name)
    say(f"cluster {name}: stopped, nothing tagged with it is left")


def _ask_head_to_stop(record: ClusterRecord, say: Progress) -> None:
    """Ask the head to delete its pool and end; say so when it cannot be reached."""
    cluster = NamedCluster(record)
    try:
        say(f"cluster {record.name}: asking its head to delete the pool")
        reply: Any = cluster.service().request(
            "POST", HEAD_STOP.path(), timeout_s=HEAD_STOP_TIMEOUT_S
        )
        if isinstance(reply, dict) and not reply.get("pool_deleted", False):
            say(f"cluster {record.name}: its head could not delete the pool; deleting it here")
    except DetachedServiceError as exc:
        say(f"cluster {record.name}: its head did not answer ({exc}); deleting directly")
    finally:
        cluster.close()


def _leftovers(record: ClusterRecord, *providers: Provider) -> list[str]:
    """What still carries the cluster's tag (one listing per provider); each is deleted once
    more (the head's reconciler may have made an instance while it was stopping)."""
    left: list[str] = []
    seen: set[int] = set()
    for provider in providers:
        if id(provider) in seen:
            continue
        seen.add(id(provider))
        for resource in provider.list_owned_resources(cluster=record.name):
            try:
                if resource.kind in POOL_KINDS:
                    provider.delete_pool(resource.name)
                else:
                    provider.delete_vm(resource.name)
            except AzManagersError as exc:
                left.append(f"{resource.kind} {resource.name} ({exc})")
                continue
        left += [f"{r.kind} {r.name}" for r in provider.list_owned_resources(cluster=record.name)]
    return sorted(set(left))
