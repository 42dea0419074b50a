"""The provider seam: the Provider protocol and the frozen dataclasses that cross it."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class InstanceState(enum.Enum):
    """What a provider reports of one instance."""

    CREATING = "creating"
    """Being provisioned; its boot script has not started yet."""
    RUNNING = "running"
    """Up; its boot script runs (the agent may not have joined yet)."""
    STOPPED = "stopped"
    """Its boot script ended with exit status 0; nothing runs on it."""
    FAILED = "failed"
    """Provisioning failed, or its boot script ended with a non-zero status."""
    DELETING = "deleting"
    """Deletion has been requested and has not finished."""


@dataclass(frozen=True)
class BootSpec:
    """What an instance needs to boot: rendered into its boot script by ``providers.boot``.

    Parameters
    ----------
    role
        ``"worker"`` (join a Dask scheduler) or ``"detached"`` (serve detached jobs).
    payload
        JSON-serialisable values for the agent: scheduler address, this cluster's TLS
        credentials, worker options. Never the caller's own credentials.
    env
        Environment variables exported before the agent starts.
    python
        The interpreter the agent runs with on the instance.
    bootstrap_requirement
        What pip installs into a virtualenv when that interpreter lacks the caller's
        azmanagers version (a stock image): by default ``azmanagers==<caller's version>``;
        a wheel URL or path works too.
    bootstrap_pip_args
        Extra pip arguments for that install (``--index-url``, ``--find-links``, ...).
    """

    role: str
    payload: Mapping[str, object] = field(repr=False)  # holds the cluster's TLS key
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    python: str = "python3"
    bootstrap_requirement: str = field(default="", repr=False)  # a URL may hold a token
    bootstrap_pip_args: tuple[str, ...] = field(default=(), repr=False)  # may hold an index token


@dataclass(frozen=True)
class Priority:
    """Regular or spot VMs, or a mix of both (Azure's priority mix policy).

    With ``spot`` and no mix every instance is spot. A mix keeps ``regular_base`` regular
    instances first, then makes ``regular_percentage_above_base`` percent of the rest
    regular (rounded up) and the others spot.
    """

    spot: bool = False
    max_price: float = -1.0
    regular_base: int = 0
    regular_percentage_above_base: float = 0.0

    @property
    def mixed(self) -> bool:
        """True when some instances are regular and some spot."""
        return self.spot and (self.regular_base > 0 or self.regular_percentage_above_base > 0)

    def regular_count(self, total: int) -> int:
        """How many of ``total`` instances are regular."""
        if not self.spot:
            return total
        above = max(total - self.regular_base, 0)
        return min(total, self.regular_base) + math.ceil(
            above * self.regular_percentage_above_base / 100
        )


REGULAR = Priority()


@dataclass(frozen=True)
class PoolSpec:
    """A pool of like instances (an Azure scale set; a folder of process-VMs locally)."""

    name: str
    boot: BootSpec
    tags: Mapping[str, str]
    template: Mapping[str, object] = field(default_factory=dict)
    max_instances: int = 16
    priority: Priority = REGULAR


@dataclass(frozen=True)
class VMSpec:
    """One stand-alone VM (a detached VM or a head node) and its network interface."""

    name: str
    boot: BootSpec
    tags: Mapping[str, str]
    template: Mapping[str, object] = field(default_factory=dict)
    nic_template: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class VMInfo:
    """A stand-alone VM as a provider reports it."""

    name: str
    state: InstanceState
    address: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """One instance as a provider reports it."""

    pool: str
    id: str
    state: InstanceState
    created_at: float
    exit_status: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnedResource:
    """A resource found by our tags (for ``gc``)."""

    kind: str
    name: str
    tags: Mapping[str, str]
    owner_alive: bool


@dataclass(frozen=True)
class UnreadableResource:
    """A record of ours that ``list_owned_resources`` skipped because it cannot be read.

    ``gc`` reports these (it cannot tell whose they are, so it deletes nothing of them): a
    local ``pool.json`` or ``vm.json`` that is not UTF-8, not JSON or not a JSON object, or
    whose tags are not a map of strings.

    Parameters
    ----------
    path
        Where the record is (a file on this machine, or a resource ID).
    reason
        Why it cannot be read, and what to do about it.
    """

    path: str
    reason: str


@dataclass(frozen=True)
class Pace:
    """How often a reconciler may list a pool's instances on a provider (its read budget).

    Joins and departures come from the scheduler, not from the provider: listing only finds
    instances that failed, were evicted or were deleted behind our back, so a steady pool is
    listed every ``steady_s``, and every ``after_change_s`` for ``change_window_s`` after a
    change (a create, scale or delete, a join or a departure).
    """

    steady_s: float
    after_change_s: float
    change_window_s: float

    def interval_s(self, since_change_s: float) -> float:
        """Return the wait before the next list, ``since_change_s`` after the last change."""
        return self.after_change_s if since_change_s < self.change_window_s else self.steady_s


@runtime_checkable
class Provider(Protocol):
    """Where instances come from.

    Every call is synchronous and bounded in time. Calls that change state are safe to
    repeat: creating a pool that exists with the same name updates nothing and returns;
    deleting what is gone is not an error. Errors raise ``ProviderError`` subclasses only.
    """

    name: str
    pace: Pace

    def check_reachable(self, host: str) -> None:
        """Raise ConfigError when this provider's instances could not reach ``host``."""
        ...

    def create_pool(self, spec: PoolSpec) -> None:
        """Create an empty pool (capacity 0); returns once the pool exists."""
        ...

    def check_capacity(
        self,
        template: Mapping[str, object],
        add: int,
        *,
        current: int = 0,
        priority: Priority = REGULAR,
    ) -> None:
        """Raise a ProviderError at once when ``add`` more instances would exceed a quota.

        ``current`` instances exist already; with a priority mix it decides how many of
        the new ones are regular (family quota) and how many spot (spot quota).
        """
        ...

    def scale_pool(self, pool: str, capacity: int) -> None:
        """Set the pool's capacity; new instances start booting; returns at once.

        Shrinking through this call removes instances of the provider's choosing: callers
        that care which go use ``delete_instances``, which lowers the capacity by as many.
        """
        ...

    def set_pool_tags(self, pool: str, tags: Mapping[str, str]) -> None:
        """Replace the pool's tags (one call; the expiry is renewed so); safe to repeat."""
        ...

    def delete_instances(self, pool: str, instance_ids: Sequence[str]) -> None:
        """Begin deleting these instances (one batched call); lowers capacity; returns at once."""
        ...

    def list_instances(self, pool: str) -> list[Instance]:
        """Return every instance of the pool, in ONE call whatever their number."""
        ...

    def delete_pool(self, pool: str, *, wait: bool = True) -> None:
        """Delete the pool and all its instances; with ``wait``, return when they are gone."""
        ...

    def instance_log(self, pool: str, instance_id: str, *, tail_bytes: int = 4096) -> str:
        """Return the end of an instance's boot log ('' when there is none)."""
        ...

    def create_vm(self, spec: VMSpec) -> VMInfo:
        """Create a stand-alone VM running ``spec.boot``; return once it exists (booting)."""
        ...

    def get_vm(self, name: str) -> VMInfo | None:
        """Return the VM with its state and address, or None when it does not exist."""
        ...

    def delete_vm(self, name: str) -> None:
        """Delete the VM (and what was made for it); return when gone; safe to repeat."""
        ...

    def vm_log(self, name: str, *, tail_bytes: int = 4096) -> str:
        """Return the end of a stand-alone VM's boot log ('' when there is none)."""
        ...

    def list_owned_resources(self, *, cluster: str | None = None) -> list[OwnedResource]:
        """Return the pools and VMs carrying our tags (exact match on ``cluster`` if given).

        One unreadable record never fails the whole listing: it is left out here and
        reported by ``list_unreadable_resources``.
        """
        ...

    def list_unreadable_resources(self) -> list[UnreadableResource]:
        """Return the records ``list_owned_resources`` had to skip (corrupt, not ours to read).

        Whatever the cluster: an unreadable record does not say which cluster it belongs to.
        Makes no change; ``[]`` on a provider whose resources are always readable (azure).
        """
        ...

    def delete_owned_resource(self, resource: OwnedResource) -> None:
        """Delete one resource found by ``list_owned_resources``; returns when it is gone."""
        ...
