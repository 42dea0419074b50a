"""Reconcile a named cluster's record with what exists: the cloud's tags are the truth."""

from __future__ import annotations

from dataclasses import dataclass, replace

from azmanagers.errors import AzManagersError, DetachedServiceError
from azmanagers.named.handle import NamedCluster, named_clusters, save_record
from azmanagers.named.stop import POOL_KINDS, providers_of
from azmanagers.named.wire import HeadStatus
from azmanagers.providers.base import InstanceState
from azmanagers.state.clusters import ClusterRecord


@dataclass(frozen=True)
class Refreshed:
    """A record after ``refresh``, what the head said, and what changed (one line each)."""

    record: ClusterRecord
    status: HeadStatus | None = None
    """The head's answer (None: it did not answer)."""
    notes: tuple[str, ...] = ()


def refresh(record: ClusterRecord) -> Refreshed:
    """Ask the head, and the providers when it does not answer; save what changed.

    One request to the head when it answers, and one tag listing to see that its pool is
    there (whatever the number of nodes). When it does not: one read of the head VM and one
    tag listing.
    """
    notes: list[str] = []
    if record.status in ("up", "stopped"):
        cluster = NamedCluster(record)
        try:
            status = cluster.status()
        except DetachedServiceError:
            status = None
        finally:
            cluster.close()
        if status is not None:
            if record.status != "up" or record.nodes != status.target:
                record = save_record(replace(record, status="up", nodes=status.target, reason=""))
            if status.target and not _pool_exists(record, notes):
                notes.append(
                    f"its pool {record.pool} is gone (deleted by hand?): its nodes will not "
                    f"come back; `azm cluster stop {record.name}` cleans up"
                )
            return Refreshed(record, status, tuple(notes))
    try:
        pool_provider, head_provider = providers_of(record)
        head = head_provider.get_vm(record.head)
        owned = pool_provider.list_owned_resources(cluster=record.name)
    except AzManagersError as exc:
        return Refreshed(record, None, (f"cannot look at the cloud: {exc}",))
    pools = [r for r in owned if r.kind in POOL_KINDS]
    head_alive = head is not None and head.state not in (
        InstanceState.FAILED,
        InstanceState.STOPPED,
    )
    if record.status == "up" and not head_alive:
        gone = "is gone" if head is None else f"is {head.state.value}"
        if head is None and not pools and record.autostop_s:
            why = f"its autostop after {record.autostop_s:g} s idle deleted the pool, then the head"
            reason = f"its head {record.head} {gone}: most likely {why}"
        else:
            reason = f"its head {record.head} {gone} (autostop, or deleted by hand)"
        if pools:
            reason += f"; its pool {pools[0].name} is still there: `azm cluster stop` deletes it"
        record = save_record(replace(record, status="stopped", reason=reason))
        notes.append(f"marked stopped: {reason}")
    elif record.status == "up":
        notes.append(f"its head {record.head} exists but its service does not answer")
        if not pools:
            notes.append(f"its pool {record.pool} is gone (deleted by hand?)")
    elif record.status == "stopped" and not head_alive and not pools:
        notes.append("nothing tagged with it is left: `azm cluster stop` forgets the record")
    return Refreshed(record, None, tuple(notes))


def _pool_exists(record: ClusterRecord, notes: list[str]) -> bool:
    """Whether the cloud has the cluster's pool (one tag listing); True when it cannot say."""
    try:
        pool_provider, _ = providers_of(record)
        owned = pool_provider.list_owned_resources(cluster=record.name)
    except AzManagersError as exc:
        notes.append(f"cannot look at the cloud: {exc}")
        return True
    return any(r.kind in POOL_KINDS and r.name == record.pool for r in owned)


def refresh_all(problems: list[str] | None = None) -> list[Refreshed]:
    """``refresh`` every recorded cluster (one that cannot be read goes to ``problems``)."""
    return [refresh(record) for record in named_clusters(problems)]
