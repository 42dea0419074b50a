"""The reconcile policy: from what the provider and scheduler report, decide what to change.

Pure functions over frozen values, so the policy is tested with plain sets; the cluster
applies the decisions (one provider list call per cycle, whatever the number of instances).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from azmanagers.providers.base import Instance, InstanceState


@dataclass(frozen=True)
class Failure:
    """An instance to delete, and why."""

    instance: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """What one reconcile cycle should do."""

    failures: tuple[Failure, ...]
    """Instances that failed; each is deleted."""
    drop_booting: tuple[str, ...]
    """Booting instances deleted because there are more instances than the target."""
    retire: int
    """How many joined workers to retire (the scheduler picks the idlest)."""
    capacity: int
    """The pool capacity to set once the deletions are done."""
    create: int
    """How many new instances that capacity starts."""
    unreplaced: int
    """Failures beyond the replacement budget: the target shrinks by this many."""
    booting: tuple[str, ...]
    """Instances up but not joined yet, within their join deadline."""


def decide(
    instances: Sequence[Instance],
    *,
    target: int,
    joined: Set[str],
    ever_joined: Set[str],
    removing: Set[str],
    now: float,
    join_timeout_s: float,
    replacements_left: int,
    left_at: Mapping[str, float] | None = None,
) -> Decision:
    """Decide one reconcile cycle.

    Parameters
    ----------
    instances
        What the provider listed.
    target
        How many instances the user wants.
    joined
        Instance names whose worker the scheduler knows now.
    ever_joined
        Instance names whose worker has joined at some point.
    removing
        Instances being removed on purpose (their leaving is no failure).
    now, join_timeout_s
        An instance that has not joined ``join_timeout_s`` after its creation has failed.
    replacements_left
        How many failed instances may still be replaced.
    left_at
        When a joined worker left the scheduler, by instance name. A running instance whose
        worker left (a nanny restarting it) may rejoin within ``join_timeout_s`` of leaving;
        without an entry, leaving counts as a failure at once.
    """
    left_at = left_at or {}
    failures: list[Failure] = []
    healthy: list[Instance] = []
    booting: list[Instance] = []
    for inst in instances:
        if inst.state is InstanceState.DELETING or inst.id in removing:
            continue
        if inst.state is InstanceState.FAILED and inst.exit_status is None:
            when = "after joining" if inst.id in ever_joined else "before it joined"
            failures.append(Failure(inst.id, f"the provider reports it failed {when}"))
        elif inst.state in (InstanceState.FAILED, InstanceState.STOPPED):
            status = "unknown" if inst.exit_status is None else str(inst.exit_status)
            verb = "joined, then stopped" if inst.id in ever_joined else "stopped before joining"
            failures.append(Failure(inst.id, f"it {verb} (exit status {status})"))
        elif inst.id in joined:
            healthy.append(inst)
        elif inst.id in ever_joined:
            left = left_at.get(inst.id)
            if left is not None and now - left <= join_timeout_s:
                booting.append(inst)  # rejoining, e.g. after a nanny restart
            else:
                failures.append(
                    Failure(inst.id, "its worker left the cluster and did not come back")
                )
        elif now - inst.created_at > join_timeout_s:
            failures.append(Failure(inst.id, f"it did not join within {join_timeout_s:g} s"))
        else:
            booting.append(inst)
    unreplaced = max(0, len(failures) - max(0, replacements_left))
    effective = max(0, target - unreplaced)
    live = len(healthy) + len(booting)
    drop: list[str] = []
    retire = 0
    if live > effective:
        excess = live - effective
        newest_first = sorted(booting, key=lambda i: i.created_at, reverse=True)
        drop = [i.id for i in newest_first[:excess]]
        retire = excess - len(drop)
    remaining_booting = tuple(i.id for i in booting if i.id not in drop)
    live_after = live - len(drop) - retire
    return Decision(
        failures=tuple(failures),
        drop_booting=tuple(drop),
        retire=retire,
        capacity=max(effective, live_after),
        create=max(0, effective - live_after),
        unreplaced=unreplaced,
        booting=remaining_booting,
    )
