"""AzCluster: a Dask cluster whose workers are provider instances, kept true by a reconciler."""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.cluster import Cluster
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol.pickle import dumps as pickle_dumps
from distributed.scheduler import Scheduler

from azmanagers.agent import LOG_TOPIC
from azmanagers.agent.logforward import LogForwardPlugin
from azmanagers.cluster import guard as scheduler_guard
from azmanagers.cluster.policy import decide
from azmanagers.config.settings import ClusterSettings
from azmanagers.errors import (
    AzManagersError,
    ClusterClosedError,
    ConfigError,
    InstanceFailedError,
    ProviderError,
    WaitTimeoutError,
)
from azmanagers.providers.base import (
    BootSpec,
    InstanceState,
    PoolSpec,
    Provider,
)
from azmanagers.providers.tags import owner_id, resource_tags
from azmanagers.tls import make_cluster_credentials

logger = logging.getLogger("azmanagers.cluster")

LOG_TAIL_BYTES = 4096
WORKER_LOG_BUFFER = 2000
FAILURE_RECORDS = 200
FAILURE_WINDOW_S = 600.0
"""Failures older than this no longer count against the replacement budget."""
TAG_RENEW_MAX_INTERVAL_S = 3600.0
PROVIDER_FAILED_CYCLES = 20
"""Consecutive failed reconcile cycles after which waits raise the provider's error."""
CLOSE_WAIT_S = 60.0
_PROGRESS_INTERVAL_S = 0.2

_live_clusters: weakref.WeakSet[AzCluster] = weakref.WeakSet()

ProgressCallback = Callable[[int, int], None]


class _SchedulerHooks(SchedulerPlugin):
    """Runs in the (in-process) scheduler: sees workers come and go, and their log records."""

    name = "azmanagers-hooks"

    def __init__(self, cluster: AzCluster) -> None:
        self._cluster = weakref.ref(cluster)
        self._names: dict[str, str] = {}  # address -> name (gone from the scheduler on removal)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        cluster = self._cluster()
        state = scheduler.workers.get(worker)
        if cluster is not None and state is not None:
            self._names[worker] = str(state.name)
            cluster._on_join(str(state.name))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        cluster = self._cluster()
        name = self._names.pop(worker, None)
        if cluster is not None and name is not None:
            cluster._on_leave(name)

    def log_event(self, topic: str, msg: Any) -> None:
        cluster = self._cluster()
        if cluster is not None and topic == LOG_TOPIC and isinstance(msg, dict):
            cluster._on_worker_log(msg)


class AzCluster(Cluster):
    """A Dask cluster on provider instances (process-VMs locally, a scale set on Azure).

    ``scale(n)`` records the target; a reconciler converges on it: it creates instances, deletes
    failed ones and those that do not join by their deadline, and replaces them within a
    budget (``max_replacements`` per ten minutes). Scheduler, workers and client talk TLS with
    a CA of this cluster's own.

    Parameters
    ----------
    template_name
        The scale-set template this cluster was made from.
    provider
        Where instances come from.
    settings
        Resolved settings (limits, timeouts, threads per worker).
    requirements
        A pip requirements text the workers install into a virtualenv before starting.
    env
        Environment variables set on every instance.
    """

    def __init__(
        self,
        template_name: str,
        provider: Provider,
        settings: ClusterSettings,
        *,
        requirements: str | None = None,
        env: Mapping[str, str] | None = None,
        template: Mapping[str, Any] | None = None,
        asynchronous: bool = False,
        loop: Any = None,
    ) -> None:
        name = f"{template_name}-{uuid.uuid4().hex[:6]}"
        self.template = dict(template or {})
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        self.template_name = template_name
        self.provider = provider
        self.settings = settings
        self.pool = name
        self.requirements = requirements
        self.env = dict(env or {})
        self.join_timeout_s = settings.join_timeout_s + (
            settings.env_build_timeout_s if requirements else 0.0
        )
        """Seconds an instance has to join (longer when it builds a custom environment)."""
        self.credentials = make_cluster_credentials(name, [settings.scheduler_host, "localhost"])
        self.security = self.credentials.security()
        self.scheduler: Scheduler | None = None
        self.worker_log_records: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=WORKER_LOG_BUFFER
        )
        self.joined_at: dict[str, float] = {}
        """When each instance's worker first joined (epoch seconds), by instance name."""
        self.evicted: list[str] = []
        """Instances that disappeared without our asking (spot evictions), oldest first."""
        self.failures: collections.deque[tuple[str, str, str]] = collections.deque(
            maxlen=FAILURE_RECORDS
        )
        """(instance, reason, boot-log tail) of the instances that failed, newest last."""
        # State shared by the caller's threads and the event loop: guarded by _lock.
        self._lock = threading.RLock()
        self._target = 0
        self._ever_joined: set[str] = set()
        self._left_at: dict[str, float] = {}
        self._removing: set[str] = set()
        self._created_at: dict[str, float] = {}
        self._seen: list[str] = []
        self._failure_times: collections.deque[float] = collections.deque()
        self._error: AzManagersError | None = None
        self._error_seq = 0
        self._failed_cycles = 0
        self.reconcile_cycles = 0
        """How many reconcile cycles have completed."""
        self._reconcile_task: asyncio.Task[None] | None = None
        self._pending_checks: set[asyncio.Future[None]] = set()
        self._scale_seq = 0
        self._wake = asyncio.Event()
        self._tags = resource_tags(name, owner_id(), settings.ttl_s)
        self._tags_renewed = time.monotonic()
        _live_clusters.add(self)
        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                self.close()
                raise

    # -- start and stop ------------------------------------------------------------------
    async def _start(self) -> None:
        if self.status == Status.running:
            return
        self.status = Status.starting
        self._wake = asyncio.Event()
        self.scheduler = await Scheduler(
            host=self.settings.scheduler_host,
            port=0,
            protocol="tls",
            security=self.security,
            dashboard=_dashboard_available(),
            dashboard_address=f"{self.settings.scheduler_host}:0",
            validate=False,
        )
        if not self.settings.workers_can_submit:
            scheduler_guard.guard(self.scheduler, self.credentials.client_common_name())
        self.scheduler.add_plugin(_SchedulerHooks(self))
        await self.scheduler.register_worker_plugin(
            None, pickle_dumps(LogForwardPlugin()), LogForwardPlugin.name, idempotent=True
        )
        self.scheduler_comm = rpc(
            self.scheduler.address,
            connection_args=self.security.get_connection_args("client"),
        )
        await super()._start()
        spec = PoolSpec(
            name=self.pool,
            boot=BootSpec(
                role="worker",
                payload=self._payload(),
                env=self.env,
                bootstrap_requirement=self.settings.bootstrap_requirement,
                bootstrap_pip_args=self.settings.pip_args(),
            ),
            tags=self._tags,
            template=self.template,
            max_instances=self.settings.max_instances,
            priority=self.settings.priority(),
        )
        await asyncio.to_thread(self.provider.create_pool, spec)
        self._reconcile_task = asyncio.ensure_future(self._reconcile_loop())
        logger.info("cluster %s: scheduler at %s", self.name, self.scheduler.address)

    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "scheduler": self.scheduler.address if self.scheduler else "",
            "tls": self.credentials.worker_payload(),
            "nthreads": self.settings.nthreads,
            "memory_limit": self.settings.memory_limit,
            "death_timeout_s": self.settings.death_timeout_s,
            "worker_host": self.settings.worker_host,
            "cluster": self.name,
            "spot": self.settings.spot,
        }
        if self.requirements:
            payload["requirements"] = self.requirements
            payload["env_build_timeout_s"] = self.settings.env_build_timeout_s
        return payload

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        self.status = Status.closing
        if self._adaptive is not None:
            self._adaptive.stop()
        if self._reconcile_task is not None:
            # Let the current cycle finish (it may be starting instances), then stop.
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._reconcile_task), CLOSE_WAIT_S)
            except (asyncio.TimeoutError, Exception):
                self._reconcile_task.cancel()
        try:
            try:
                await asyncio.to_thread(self.provider.delete_pool, self.pool, wait=True)
            except RuntimeError:  # interpreter exit: executors refuse new work; block instead
                self.provider.delete_pool(self.pool, wait=True)
        except AzManagersError:
            logger.exception("cluster %s: deleting pool %s failed", self.name, self.pool)
        self.status = Status.running  # let the base class close its comms
        await super()._close()
        if self.scheduler is not None:
            await self.scheduler.close()
        _live_clusters.discard(self)

    def close(self, timeout: float | None = None) -> Any:
        """Delete every instance, stop the scheduler and the event loop."""
        result = super().close(timeout)
        if not self.asynchronous:
            self._loop_runner.stop()
        return result

    # -- scaling ---------------------------------------------------------------------------
    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> None:
        """Record a target of ``n`` workers; the reconciler converges on it."""
        del memory, cores
        _check_count(n, allow_zero=True)
        self._check_open()
        self._check_limit(n)
        with self._lock:
            self._scale_seq += 1
            seq = self._scale_seq
        if _on_running_loop() and n > self._target:
            # adapt() scales from the event loop: check the quota (ARM calls) in a thread,
            # then record the target; the loop (heartbeats, tasks) never waits for Azure
            task = asyncio.ensure_future(self._scale_after_check(n, seq))
            self._pending_checks.add(task)
            task.add_done_callback(self._pending_checks.discard)
            return
        self._check_capacity(n - self._target)
        self._set_target(n)

    def _check_capacity(self, add: int) -> None:
        """Ask the provider whether ``add`` more instances fit the quota (raises if not)."""
        self.provider.check_capacity(
            self.template, add, current=self._target, priority=self.settings.priority()
        )

    def _set_target(self, n: int) -> None:
        with self._lock:
            self._target = n
            self._error = None  # a new intent: earlier failures no longer speak for it
        self._poke()

    async def _scale_after_check(self, n: int, seq: int) -> None:
        """Check the quota for growing to ``n`` off the loop, then make ``n`` the target
        (unless a newer ``scale`` came in meanwhile)."""
        try:
            await asyncio.to_thread(self._check_capacity, n - self._target)
        except AzManagersError as exc:
            logger.warning("cluster %s: not scaling to %d workers: %s", self.name, n, exc)
            self._set_error(exc)
            return
        with self._lock:
            if seq != self._scale_seq:
                return
        self._set_target(n)

    def grow(self, n: int) -> int:
        """Raise the target by ``n`` (atomically) and return the new target."""
        _check_count(n)
        self._check_open()
        self._check_limit(self._target + n)
        self._check_capacity(n)
        with self._lock:
            self._check_limit(self._target + n)
            self._target += n
            self._error = None
            target = self._target
        self._poke()
        return target

    def _check_limit(self, n: int) -> None:
        if n > self.settings.max_instances:
            raise ConfigError(
                f"template {self.template_name!r} allows at most {self.settings.max_instances} "
                f"instances (asked for {n}); raise max_instances in the template."
            )

    def adapt(
        self,
        Adaptive: type[Adaptive] = Adaptive,
        *,
        minimum: int = 0,
        maximum: int | None = None,
        **kwargs: Any,
    ) -> Adaptive:
        """Scale with Dask's adaptive policy, between ``minimum`` and ``maximum`` workers.

        ``maximum`` defaults to (and may not exceed) the template's ``max_instances``.
        """
        cap = self.settings.max_instances
        if maximum is None:
            maximum = cap
        if maximum > cap:
            raise ConfigError(
                f"adapt(maximum={maximum}) exceeds the template's max_instances ({cap}); "
                "lower maximum or raise max_instances in the template."
            )
        if minimum > maximum:
            raise ConfigError(f"adapt(minimum={minimum}) is above maximum={maximum}.")
        return super().adapt(Adaptive=Adaptive, minimum=minimum, maximum=maximum, **kwargs)

    @property
    def target(self) -> int:
        """The number of workers the cluster converges on."""
        return self._target

    async def scale_down(self, workers: Iterable[str]) -> None:
        """Remove these workers (names or addresses) and lower the target by as many."""
        names = self._names_of(workers)
        with self._lock:
            names -= self._removing
            self._target = max(0, self._target - len(names))
        if names:
            await self._retire(names)
        self._poke()

    async def _retire(self, names: set[str]) -> None:
        """Retire the workers gracefully (bounded), then delete their instances."""
        with self._lock:
            self._removing.update(names)
        if self.scheduler is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.scheduler.retire_workers(names=sorted(names), close_workers=True, remove=True),
                self.settings.retire_timeout_s,
            )
        await asyncio.to_thread(self.provider.delete_instances, self.pool, sorted(names))

    def remove_workers(self, workers: Iterable[str]) -> None:
        """Retire and delete these workers (names or addresses), blocking until done."""
        self._check_open()
        self.sync(self.scale_down, list(workers))

    def _names_of(self, workers: Iterable[str]) -> set[str]:
        by_address = {}
        if self.scheduler is not None:
            by_address = {addr: str(ws.name) for addr, ws in list(self.scheduler.workers.items())}
        with self._lock:
            known = set(by_address.values()) | set(self._created_at)
        names = set()
        for w in workers:
            name = by_address.get(str(w), str(w))
            if name not in known:
                raise ConfigError(
                    f"no worker or instance named {w!r} in cluster {self.name}; "
                    "see cluster.worker_names()."
                )
            names.add(name)
        return names

    @property
    def plan(self) -> set[str]:
        """The instances that exist and are not being removed."""
        with self._lock:
            return {n for n in self._created_at if n not in self._removing}

    @property
    def requested(self) -> set[str]:
        return self.plan

    # -- the reconciler -------------------------------------------------------------------
    def _poke(self) -> None:
        loop = self.loop
        if loop is not None:
            loop.add_callback(self._wake.set)

    async def _reconcile_loop(self) -> None:
        while self.status in (Status.running, Status.starting):
            try:
                await self._reconcile_once()
                self._failed_cycles = 0
                self.reconcile_cycles += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed_cycles += 1
                logger.warning(
                    "cluster %s: reconcile cycle failed (%d in a row): %s",
                    self.name,
                    self._failed_cycles,
                    exc,
                    exc_info=self._failed_cycles == 1,
                )
                if self._failed_cycles == PROVIDER_FAILED_CYCLES:
                    self._set_error(
                        ProviderError(
                            f"cluster {self.name}: the provider failed {PROVIDER_FAILED_CYCLES} "
                            f"reconcile cycles in a row; the last error: {exc}"
                        )
                    )
            if self.status not in (Status.running, Status.starting):
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            self._wake.clear()

    def _set_error(self, error: AzManagersError) -> None:
        with self._lock:
            self._error = error
            self._error_seq += 1
        logger.error("%s", error)

    async def _reconcile_once(self) -> None:
        if self.scheduler is None:
            return
        instances = await asyncio.to_thread(self.provider.list_instances, self.pool)
        now = time.time()
        joined = {str(ws.name) for ws in list(self.scheduler.workers.values())}
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
            while self._failure_times and now - self._failure_times[0] > FAILURE_WINDOW_S:
                self._failure_times.popleft()
            replacements_left = self.settings.max_replacements - len(self._failure_times)
            target = self._target
            decision = decide(
                instances,
                target=target,
                joined=joined,
                ever_joined=set(self._ever_joined),
                removing=set(self._removing),
                now=now,
                join_timeout_s=self.join_timeout_s,
                replacements_left=replacements_left,
                left_at=dict(self._left_at),
            )
        for inst_id in joined & listed:
            self._on_join(inst_id)
        if vanished:
            self.evicted.extend(vanished)
            logger.warning(
                "cluster %s: %s vanished (evicted?); %s",
                self.name,
                ", ".join(vanished),
                "replacing them" if self.settings.replace_evicted else "not replacing them",
            )
            if not self.settings.replace_evicted:
                with self._lock:
                    self._target = max(0, self._target - len(vanished))
                decision = dataclasses.replace(
                    decision, create=max(0, decision.create - len(vanished))
                )
        delete = [f.instance for f in decision.failures] + list(decision.drop_booting)
        for failure in decision.failures:
            tail = await asyncio.to_thread(
                self.provider.instance_log, self.pool, failure.instance, tail_bytes=LOG_TAIL_BYTES
            )
            self.failures.append((failure.instance, failure.reason, tail))
            self._failure_times.append(now)
            logger.warning(
                "cluster %s: instance %s failed: %s", self.name, failure.instance, failure.reason
            )
        if decision.unreplaced:
            instance, reason, tail = self.failures[-1]
            with self._lock:
                self._target = max(0, self._target - decision.unreplaced)
                aim = self._target
            self._set_error(
                InstanceFailedError(
                    f"instance {instance} of cluster {self.name} failed ({reason}) and the "
                    f"replacement budget ({self.settings.max_replacements} per "
                    f"{FAILURE_WINDOW_S:.0f} s) is spent; the cluster now aims at {aim} "
                    f"workers. End of its boot log:\n{_indent(tail)}",
                    instance=instance,
                    log_tail=tail,
                )
            )
        retired: list[str] = []
        if decision.retire:
            to_close = self.scheduler.workers_to_close(n=decision.retire, attribute="name")
            retired = list(to_close[: decision.retire])
            await self._retire(set(retired))
        if delete:
            with self._lock:
                self._removing.update(delete)
            await asyncio.to_thread(self.provider.delete_instances, self.pool, delete)
        if decision.create:
            # Grow only, relative to what the provider counts as live after the deletions
            # (instances still retiring included): shrinking always names its instances.
            dropped = set(delete) | set(retired)
            live = [
                i
                for i in instances
                if i.state is not InstanceState.DELETING and i.id not in dropped
            ]
            await asyncio.to_thread(
                self.provider.scale_pool, self.pool, len(live) + decision.create
            )
        await self._renew_tags()

    async def _renew_tags(self) -> None:
        interval = min(TAG_RENEW_MAX_INTERVAL_S, self.settings.ttl_s / 3)
        if time.monotonic() - self._tags_renewed < interval:
            return
        self._tags = resource_tags(self.name, owner_id(), self.settings.ttl_s)
        await asyncio.to_thread(self.provider.set_pool_tags, self.pool, self._tags)
        self._tags_renewed = time.monotonic()

    # -- workers and waiting -------------------------------------------------------------
    def _on_join(self, name: str) -> None:
        with self._lock:
            self._left_at.pop(name, None)
            if name in self._ever_joined:
                return
            self._ever_joined.add(name)
            self.joined_at[name] = time.time()
        logger.info("cluster %s: %s joined", self.name, name)

    def _on_leave(self, name: str) -> None:
        with self._lock:
            self._left_at[name] = time.time()

    @property
    def join_times(self) -> dict[str, float]:
        """Seconds from each current instance's creation to its worker joining, by name."""
        with self._lock:
            return {
                name: max(0.0, self.joined_at[name] - created)
                for name, created in self._created_at.items()
                if name in self.joined_at
            }

    def _on_worker_log(self, msg: dict[str, Any]) -> None:
        self.worker_log_records.append(msg)
        worker = str(msg.get("instance") or msg.get("worker", "?"))
        levelno = int(msg.get("levelno", logging.INFO))
        target = logging.getLogger(f"azmanagers.worker.{worker}")
        if not target.isEnabledFor(levelno):
            return
        record = logging.makeLogRecord(
            {
                "name": target.name,
                "levelno": levelno,
                "levelname": logging.getLevelName(levelno),
                "msg": "[%s] %s: %s",
                "args": (worker, msg.get("name", "?"), msg.get("msg", "")),
                "created": float(msg.get("created", time.time())),
                "worker": worker,
                "remote_logger": msg.get("name", "?"),
            }
        )
        target.handle(record)

    def worker_names(self) -> list[str]:
        """Return the names of the workers that have joined, sorted."""
        if self.scheduler is None:
            return []
        return sorted(str(ws.name) for ws in list(self.scheduler.workers.values()))

    def nworkers(self) -> int:
        """Return how many workers have joined the scheduler."""
        if self.scheduler is None:
            return 0
        return len(self.scheduler.workers)

    def nworkers_provisioned(self) -> int:
        """Return how many instances exist and are not being deleted."""
        return len(self.plan)

    def _check_open(self) -> None:
        if self.status in (Status.closing, Status.closed):
            raise ClusterClosedError(
                f"cluster {self.name} is closed; create a new one with addprocs."
            )

    def raise_if_failed(self) -> None:
        """Raise the error that spent the replacement budget (or the provider's), if any."""
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def default_wait_s(self) -> float:
        """The deadline of a wait given no timeout: every allowed replacement's join deadline."""
        return self.join_timeout_s * (self.settings.max_replacements + 2)

    def wait_for_workers(
        self,
        n_workers: int,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Block until ``n_workers`` workers have joined.

        Parameters
        ----------
        n_workers
            How many workers to wait for.
        timeout
            Seconds; by default ``default_wait_s()`` (a wait always has a deadline).
        progress
            Called as ``progress(joined, n_workers)`` whenever the count changes.

        Raises
        ------
        InstanceFailedError, ProviderError
            Instances failed past the replacement budget, or the provider kept failing,
            since this wait began.
        WaitTimeoutError
            The deadline passed first; the message says how many joined.
        """
        _check_count(n_workers)
        self._check_open()
        wait_s = self.default_wait_s() if timeout is None else float(timeout)
        deadline = time.monotonic() + wait_s
        with self._lock:
            seq = self._error_seq
        last = -1
        while True:
            joined = self.nworkers()
            if joined != last:
                last = joined
                if progress is not None:
                    progress(joined, n_workers)
                logger.info("cluster %s: %d of %d workers joined", self.name, joined, n_workers)
            if joined >= n_workers:
                return
            with self._lock:
                error = self._error if self._error_seq > seq else None
                target = self._target
            if error is not None:
                raise error
            if target < n_workers:
                raise ConfigError(
                    f"waiting for {n_workers} workers but cluster {self.name} aims at "
                    f"{target}; call scale({n_workers}) first."
                )
            if self.status in (Status.closing, Status.closed):
                raise ClusterClosedError(f"cluster {self.name} was closed while waiting.")
            if time.monotonic() > deadline:
                raise WaitTimeoutError(self._timeout_message(joined, n_workers, wait_s))
            time.sleep(_PROGRESS_INTERVAL_S)

    def _timeout_message(self, joined: int, wanted: int, timeout: float) -> str:
        booting = sorted(set(self.plan) - set(self.worker_names()))
        text = f"{joined} of {wanted} workers joined cluster {self.name} within {timeout:g} s"
        if booting:
            text += f"; still booting: {', '.join(booting)}"
            tail = self.provider.instance_log(self.pool, booting[0], tail_bytes=1024)
            if tail.strip():
                text += f". End of {booting[0]}'s boot log:\n{_indent(tail)}"
        return text

    def instance_logs(self) -> dict[str, str]:
        """Return the boot log of every instance this cluster has had, by instance name."""
        with self._lock:
            names = list(self._seen)
        logs = {}
        for name in names:
            text = self.provider.instance_log(self.pool, name, tail_bytes=1 << 20)
            if text:
                logs[name] = text
        return logs

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> Any:
        """Return Dask's logs plus every instance's boot log (keys ``boot:<instance>``)."""
        logs = super().get_logs(cluster=cluster, scheduler=scheduler, workers=workers)
        for name, text in self.instance_logs().items():
            logs[f"boot:{name}"] = text
        return logs


def _dashboard_available() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()) or "    (empty)"


def _on_running_loop() -> bool:
    """Tell whether the caller runs on an event loop (Dask's adaptive scaling does)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _check_count(n: object, *, allow_zero: bool = False) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or (n == 0 and not allow_zero):
        least = "0" if allow_zero else "1"
        raise ConfigError(f"the number of workers must be a whole number >= {least}, got {n!r}.")


@atexit.register
def _close_all_clusters() -> None:
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.close(timeout=30)
