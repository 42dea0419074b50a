"""The Reconciler: keeps one pool at its target, at the provider's pace, without a scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Set
from typing import TYPE_CHECKING

from azmanagers.cluster.deletes import Deletes
from azmanagers.cluster.failures import Failures
from azmanagers.cluster.gate import ThrottleGate
from azmanagers.cluster.latch import ErrorLatch
from azmanagers.cluster.pace import reconcile_pace
from azmanagers.cluster.policy import Decision, decide
from azmanagers.config.settings import ClusterSettings
from azmanagers.errors import ThrottledError
from azmanagers.providers.base import Instance, InstanceState, Provider
from azmanagers.providers.tags import owner_id, resource_tags

if TYPE_CHECKING:
    from azmanagers.cluster.hooks import Workers

logger = logging.getLogger("azmanagers.cluster")

LOG_TAIL_BYTES = 4096
TAG_RENEW_MAX_INTERVAL_S = 3600.0


class Reconciler:
    """Converges a provider pool on a target number of instances whose workers join.

    It owns the bookkeeping: when each instance was created and joined, which are being
    removed, which workers left, the replacement budget, failures, tag renewal and the
    provider's error streak. Joins come from ``joined`` (and ``on_join``), not from the
    provider: the pool is listed once every ``pace.steady_s``, and every
    ``pace.after_change_s`` for ``pace.change_window_s`` after a change. A ``ThrottledError``
    stops every provider call made through it until its ``retry_after_s`` has passed.

    Parameters
    ----------
    provider
        Where the pool lives.
    pool
        The pool's name (created by the caller).
    joined
        Returns the names of the workers that have joined now.
    settings
        Limits, timeouts and the optional ``reconcile_interval_s`` override of the pace.
    join_timeout_s
        Seconds an instance has to join (default ``settings.join_timeout_s``).
    workers
        Retires joined workers on a scale-down; without it they are only deleted.
    name
        The cluster's name, for messages and the pool's tags (default: the pool's).
    """

    def __init__(
        self,
        provider: Provider,
        pool: str,
        joined: Callable[[], Set[str]],
        settings: ClusterSettings,
        *,
        join_timeout_s: float | None = None,
        workers: Workers | None = None,
        name: str | None = None,
    ) -> None:
        self.provider = provider
        self.pool = pool
        self.name = name or pool
        self.settings = settings
        self.join_timeout_s = settings.join_timeout_s if join_timeout_s is None else join_timeout_s
        self._joined = joined
        self._workers = workers
        self.pace = reconcile_pace(provider, settings.reconcile_interval_s, self.name)
        """How often the pool is listed: the provider's, or the user's fixed interval."""
        self.tags = resource_tags(self.name, owner_id(), settings.ttl_s)
        self.gate = ThrottleGate(self.name)
        """Every provider call goes through it: a 429 stops them all until its Retry-After."""
        self.deletes = Deletes(provider, pool, self.gate)
        self.errors = ErrorLatch()
        """The error waits raise: a spent replacement budget, or a failing provider."""
        self.failed = Failures(self.name, settings.max_replacements, self.errors)
        """Failed instances (the replacement budget), evictions, failed cycles in a row."""
        self.failures = self.failed.records
        """(instance, reason, boot-log tail) of the instances that failed, newest last."""
        self.evicted = self.failed.evicted
        """Instances that disappeared without our asking (spot evictions), oldest first."""
        self.joined_at: dict[str, float] = {}
        """When each instance's worker first joined (epoch seconds), by instance name."""
        self.cycles = 0
        """How many reconcile steps have completed."""
        # State shared by the caller's threads and the event loop: guarded by _lock.
        self._lock = threading.RLock()
        self._target = 0
        self._ever_joined: set[str] = set()
        self._left_at: dict[str, float] = {}
        self._removing: set[str] = set()
        self._created_at: dict[str, float] = {}
        self._seen: list[str] = []
        self._changed_at = time.monotonic()
        self._tags_renewed = time.monotonic()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    # -- the target ------------------------------------------------------------------------
    @property
    def target(self) -> int:
        """The number of instances the pool converges on."""
        return self._target

    def set_target(self, n: int) -> None:
        """Make ``n`` the target (a new intent: earlier failures no longer speak for it)."""
        with self._lock:
            moved = n != self._target
            self._target = n
            self.errors.clear()
        if moved:
            self.changed(wake=True)

    def grow(self, n: int, check: Callable[[int], None]) -> int:
        """Raise the target by ``n`` atomically, after ``check(new_target)``; return it."""
        with self._lock:
            check(self._target + n)
            self._target += n
            self.errors.clear()
            target = self._target
        self.changed(wake=True)
        return target

    def shrink(self, names: Set[str]) -> set[str]:
        """Lower the target by the named instances not yet being removed; return those."""
        with self._lock:
            fresh = set(names) - self._removing
            self._target = max(0, self._target - len(fresh))
        self.changed(wake=True)
        return fresh

    def mark_removing(self, names: Set[str]) -> None:
        """Record that these instances are being removed on purpose (no failure)."""
        with self._lock:
            self._removing.update(names)

    @property
    def plan(self) -> set[str]:
        """The instances that exist and are not being removed."""
        with self._lock:
            return {n for n in self._created_at if n not in self._removing}

    def known(self) -> set[str]:
        """Every instance listed and not yet gone."""
        with self._lock:
            return set(self._created_at)

    def seen(self) -> list[str]:
        """Every instance this pool has had, oldest first."""
        with self._lock:
            return list(self._seen)

    @property
    def join_times(self) -> dict[str, float]:
        """Seconds from each current instance's creation to its worker joining, by name."""
        with self._lock:
            return {
                name: max(0.0, self.joined_at[name] - created)
                for name, created in self._created_at.items()
                if name in self.joined_at
            }

    # -- events ----------------------------------------------------------------------------
    def changed(self, *, wake: bool = False) -> None:
        """Note a change (list at the fast pace for a while); ``wake``: reconcile now."""
        with self._lock:
            self._changed_at = time.monotonic()
        if wake:
            self.wake()

    def wake(self) -> None:
        """Run a reconcile step now (thread-safe); a throttled provider is still not called."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def on_join(self, name: str) -> None:
        """A worker named after its instance joined."""
        with self._lock:
            self._left_at.pop(name, None)
            if name in self._ever_joined:
                return
            self._ever_joined.add(name)
            self.joined_at[name] = time.time()
        self.changed()
        logger.info("cluster %s: %s joined", self.name, name)

    def on_leave(self, name: str) -> None:
        """A joined worker left: look at the pool soon (its instance may have failed)."""
        with self._lock:
            self._left_at[name] = time.time()
        self.changed(wake=True)

    # -- provider calls, throttled -------------------------------------------------------
    def instance_log(self, instance: str, tail_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of an instance's boot log (a note instead while throttled)."""
        log = self.provider.instance_log
        try:
            return self.gate.call("reading a log", log, self.pool, instance, tail_bytes=tail_bytes)
        except ThrottledError:
            return "(not read: the provider is throttling requests)"

    def instance_logs(self) -> dict[str, str]:
        """The boot log of every instance this pool has had, by instance name."""
        logs = {name: self.instance_log(name, tail_bytes=1 << 20) for name in self.seen()}
        return {name: text for name, text in logs.items() if text}

    # -- the loop ---------------------------------------------------------------------------
    def interval_s(self) -> float:
        """Seconds to the next list: fast right after a change, slow when steady."""
        with self._lock:
            since_s = time.monotonic() - self._changed_at
        return self.pace.interval_s(since_s)

    async def run(self) -> None:
        """Reconcile until ``stop()``: a step, then a wait at the pace (or until woken)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not self._stopping:
            throttled_s = self.gate.throttled_for_s()
            if throttled_s > 0:
                await self._sleep(throttled_s)
                continue
            try:
                await self.step()
                self.failed.cycle_succeeded()
                self.cycles += 1
            except asyncio.CancelledError:
                raise
            except ThrottledError:
                continue  # logged once by call(); the loop waits out the Retry-After
            except Exception as exc:
                self.failed.cycle_failed(exc)
            if not self._stopping:
                await self._sleep(self.interval_s())

    async def _sleep(self, seconds: float) -> None:
        wake = self._wake or asyncio.Event()  # run(), the only caller, makes it first
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)
        wake.clear()

    def stop(self) -> None:
        """Make ``run()`` return after its current step."""
        self._stopping = True
        self.wake()

    # -- one step ---------------------------------------------------------------------------
    async def step(self) -> None:
        """List the pool once, decide, and apply: delete, retire, create, renew tags."""
        instances = await self.gate.acall(
            "listing instances", self.provider.list_instances, self.pool
        )
        joined = set(self._joined())
        decision, vanished = self._decide(instances, joined)
        if await self.deletes.retry(instances):
            self.changed()
        for name in joined & {i.id for i in instances}:
            self.on_join(name)
        decision = self._on_vanished(vanished, decision)
        delete = [f.instance for f in decision.failures] + list(decision.drop_booting)
        now = time.time()
        for failure in decision.failures:
            tail = await asyncio.to_thread(self.instance_log, failure.instance)
            self.failed.instance_failed(failure.instance, failure.reason, tail, now)
        if decision.unreplaced:
            self._budget_spent(decision.unreplaced)
        retired: list[str] = []
        if decision.retire:
            retired = self._choose_retirees(decision.retire)
            await self.retire(set(retired))
        if delete:
            self.mark_removing(set(delete))
            await self._delete(delete)
        if decision.create:
            # Grow only, relative to what the provider counts as live after the deletions
            # (instances still retiring included): shrinking always names its instances.
            dropped = set(delete) | set(retired)
            live = [
                i
                for i in instances
                if i.state is not InstanceState.DELETING and i.id not in dropped
            ]
            await self.gate.acall(
                "scaling the pool", self.provider.scale_pool, self.pool, len(live) + decision.create
            )
            self.changed()
        await self._renew_tags()

    def _decide(self, instances: list[Instance], joined: set[str]) -> tuple[Decision, list[str]]:
        now = time.time()
        listed = {i.id for i in instances}
        with self._lock:
            for inst in instances:
                if inst.id not in self._created_at:
                    self._created_at[inst.id] = inst.created_at
                    self._seen.append(inst.id)
            # Gone without our asking: evicted (spot) or deleted by someone else.
            vanished = sorted(set(self._created_at) - listed - self._removing)
            self._removing &= listed
            for gone in set(self._created_at) - listed:
                self._created_at.pop(gone, None)
                self._left_at.pop(gone, None)
            decision = decide(
                instances,
                target=self._target,
                joined=joined,
                ever_joined=set(self._ever_joined),
                removing=set(self._removing),
                now=now,
                join_timeout_s=self.join_timeout_s,
                replacements_left=self.failed.replacements_left(now),
                left_at=dict(self._left_at),
            )
        return decision, vanished

    def _on_vanished(self, vanished: list[str], decision: Decision) -> Decision:
        if not vanished:
            return decision
        replace = self.settings.replace_evicted
        self.failed.vanished(vanished, replace=replace)
        self.changed()
        if replace:
            return decision
        with self._lock:
            self._target = max(0, self._target - len(vanished))
        return dataclasses.replace(decision, create=max(0, decision.create - len(vanished)))

    def _budget_spent(self, unreplaced: int) -> None:
        with self._lock:
            self._target = max(0, self._target - unreplaced)
            aim = self._target
        self.failed.budget_spent(aim)

    def _choose_retirees(self, n: int) -> list[str]:
        if self._workers is not None:
            return self._workers.choose_retirees(n)[:n]
        return sorted(set(self._joined()) - self._removing)[:n]

    async def retire(self, names: Set[str]) -> None:
        """Retire these workers gracefully (when a scheduler is given), then delete them."""
        self.mark_removing(names)
        if self._workers is not None:
            with contextlib.suppress(Exception):
                await self._workers.retire(names)
        await self._delete(sorted(names))

    async def _delete(self, names: list[str]) -> None:
        await self.deletes.delete(names)
        self.changed()

    async def _renew_tags(self) -> None:
        interval = min(TAG_RENEW_MAX_INTERVAL_S, self.settings.ttl_s / 3)
        if time.monotonic() - self._tags_renewed < interval:
            return
        tags = resource_tags(self.name, owner_id(), self.settings.ttl_s)
        await self.gate.acall("renewing tags", self.provider.set_pool_tags, self.pool, tags)
        self.tags = tags
        self._tags_renewed = time.monotonic()
