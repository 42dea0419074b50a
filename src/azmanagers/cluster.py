"""AzCluster: a Dask cluster whose workers are provider instances, kept true by a reconciler."""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import Scheduler

from azmanagers.agent import LOG_TOPIC
from azmanagers.errors import (
    AzManagersError,
    ClusterClosedError,
    ConfigError,
    InstanceFailedError,
    WaitTimeoutError,
)
from azmanagers.providers.base import BootSpec, PoolSpec, Provider, resource_tags
from azmanagers.providers.local import owner_id
from azmanagers.reconcile import decide
from azmanagers.settings import ClusterSettings
from azmanagers.tls import make_cluster_credentials

logger = logging.getLogger("azmanagers.cluster")
worker_logger = logging.getLogger("azmanagers.worker")

LOG_TAIL_BYTES = 4096
WORKER_LOG_BUFFER = 2000
TAG_RENEW_INTERVAL_S = 3600.0
_PROGRESS_INTERVAL_S = 0.2

_live_clusters: weakref.WeakSet[AzCluster] = weakref.WeakSet()

ProgressCallback = Callable[[int, int], None]


class _SchedulerHooks(SchedulerPlugin):
    """Runs in the (in-process) scheduler: sees workers join and their forwarded log records."""

    name = "azmanagers-hooks"

    def __init__(self, cluster: AzCluster) -> None:
        self._cluster = weakref.ref(cluster)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        cluster = self._cluster()
        state = scheduler.workers.get(worker)
        if cluster is not None and state is not None:
            cluster._on_join(str(state.name))

    def log_event(self, topic: str, msg: Any) -> None:
        cluster = self._cluster()
        if cluster is not None and topic == LOG_TOPIC and isinstance(msg, dict):
            cluster._on_worker_log(msg)


class AzCluster(Cluster):
    """A Dask cluster on provider instances (process-VMs locally, a scale set on Azure).

    ``scale(n)`` records the target; a reconciler converges on it: it creates instances, deletes
    failed ones and those that do not join by their deadline, and replaces them a bounded
    number of times. Scheduler, workers and client talk TLS with a CA of this cluster's own.

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
        asynchronous: bool = False,
        loop: Any = None,
    ) -> None:
        name = f"{template_name}-{uuid.uuid4().hex[:6]}"
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        self.template_name = template_name
        self.provider = provider
        self.settings = settings
        self.pool = name
        self.requirements = requirements
        self.env = dict(env or {})
        self.credentials = make_cluster_credentials(name, [settings.scheduler_host, "localhost"])
        self.security = self.credentials.security()
        self.scheduler: Scheduler | None = None
        self.worker_log_records: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=WORKER_LOG_BUFFER
        )
        self.joined_at: dict[str, float] = {}
        """When each instance's worker joined (epoch seconds), by instance name."""
        self.failures: list[tuple[str, str, str]] = []
        """(instance, reason, boot-log tail) of every instance that failed."""
        self._target = 0
        self._ever_joined: set[str] = set()
        self._removing: set[str] = set()
        self._created_at: dict[str, float] = {}
        self._replacements_left = settings.max_replacements
        self._error: InstanceFailedError | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
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
        self.scheduler.add_plugin(_SchedulerHooks(self))
        self.scheduler_comm = rpc(
            self.scheduler.address,
            connection_args=self.security.get_connection_args("client"),
        )
        await super()._start()
        boot = BootSpec(
            role="worker",
            payload=self._payload(),
            env=self.env,
        )
        spec = PoolSpec(
            name=self.pool,
            boot=boot,
            tags=self._tags,
            max_instances=self.settings.max_instances,
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
        }
        if self.requirements:
            payload["requirements"] = self.requirements
        return payload

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        self.status = Status.closing
        if self._adaptive is not None:
            self._adaptive.stop()
        if self._reconcile_task is not None:
            self._reconcile_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconcile_task
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
        if n > self.settings.max_instances:
            raise ConfigError(
                f"template {self.template_name!r} allows at most {self.settings.max_instances} "
                f"instances (asked for {n}); raise max_instances in the template."
            )
        self._target = n
        self._poke()

    @property
    def target(self) -> int:
        """The number of workers the cluster converges on."""
        return self._target

    async def scale_down(self, workers: Iterable[str]) -> None:
        """Remove these workers (names or addresses) and lower the target by as many."""
        names = self._names_of(workers)
        if not names:
            return
        self._target = max(0, self._target - len(names))
        await self._retire(names)
        self._poke()

    async def _retire(self, names: set[str]) -> None:
        """Retire the workers gracefully (bounded), then delete their instances."""
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
            by_address = {addr: str(ws.name) for addr, ws in self.scheduler.workers.items()}
        known = set(by_address.values()) | set(self._created_at)
        names = set()
        for w in workers:
            name = by_address.get(str(w), str(w))
            if name not in known:
                raise ConfigError(
                    f"no worker or instance named {w!r} in cluster {self.name}; "
                    f"see cluster.workers_names()."
                )
            names.add(name)
        return names

    @property
    def plan(self) -> set[str]:
        live = {n for n in self._created_at if n not in self._removing}
        return live

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
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("cluster %s: reconcile cycle failed; retrying", self.name)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.reconcile_interval_s)
            self._wake.clear()

    async def _reconcile_once(self) -> None:
        if self.scheduler is None:
            return
        instances = await asyncio.to_thread(self.provider.list_instances, self.pool)
        now = time.time()
        joined = {str(ws.name) for ws in self.scheduler.workers.values()}
        for inst in instances:
            self._created_at.setdefault(inst.id, inst.created_at)
            if inst.id in joined:
                self._on_join(inst.id)
        listed = {i.id for i in instances}
        self._removing &= listed
        for gone in set(self._created_at) - listed:
            self._created_at.pop(gone, None)
        decision = decide(
            instances,
            target=self._target,
            joined=joined,
            ever_joined=self._ever_joined,
            removing=self._removing,
            now=now,
            join_timeout_s=self.settings.join_timeout_s,
            replacements_left=self._replacements_left,
        )
        delete = [f.instance for f in decision.failures] + list(decision.drop_booting)
        for failure in decision.failures:
            tail = await asyncio.to_thread(
                self.provider.instance_log, self.pool, failure.instance, tail_bytes=LOG_TAIL_BYTES
            )
            self.failures.append((failure.instance, failure.reason, tail))
            logger.warning(
                "cluster %s: instance %s failed: %s", self.name, failure.instance, failure.reason
            )
        replaced = len(decision.failures) - decision.unreplaced
        self._replacements_left = max(0, self._replacements_left - replaced)
        if decision.unreplaced:
            self._target = max(0, self._target - decision.unreplaced)
            instance, reason, tail = self.failures[-1]
            self._error = InstanceFailedError(
                f"instance {instance} of cluster {self.name} failed ({reason}) and the "
                f"replacement budget ({self.settings.max_replacements}) is spent; the cluster "
                f"now aims at {self._target} workers. End of its boot log:\n{_indent(tail)}",
                instance=instance,
                log_tail=tail,
            )
            logger.error("%s", self._error)
        if decision.retire:
            to_close = self.scheduler.workers_to_close(n=decision.retire, attribute="name")
            await self._retire(set(to_close[: decision.retire]))
        if delete:
            self._removing.update(delete)
            await asyncio.to_thread(self.provider.delete_instances, self.pool, delete)
        if decision.create:
            await asyncio.to_thread(self.provider.scale_pool, self.pool, decision.capacity)
        if time.monotonic() - self._tags_renewed > TAG_RENEW_INTERVAL_S:
            self._tags = resource_tags(self.name, owner_id(), self.settings.ttl_s)
            setter = getattr(self.provider, "set_pool_tags", None)
            if setter is not None:
                await asyncio.to_thread(setter, self.pool, self._tags)
            self._tags_renewed = time.monotonic()

    # -- workers and waiting -------------------------------------------------------------
    def _on_join(self, name: str) -> None:
        if name in self._ever_joined:
            return
        self._ever_joined.add(name)
        self.joined_at[name] = time.time()
        self._replacements_left = self.settings.max_replacements
        logger.info("cluster %s: %s joined", self.name, name)

    @property
    def join_times(self) -> dict[str, float]:
        """Seconds from each current instance's creation to its worker joining, by name."""
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
        return sorted(str(w.get("name")) for w in self.scheduler_info["workers"].values())

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
        """Raise the instance failure that spent the replacement budget, if there was one."""
        if self._error is not None:
            raise self._error

    def wait_for_workers(
        self,
        n_workers: int,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        """Block until ``n_workers`` workers have joined.

        Raises
        ------
        InstanceFailedError
            An instance failed past the replacement budget.
        WaitTimeoutError
            ``timeout`` seconds passed first; the message says how many joined.
        """
        _check_count(n_workers)
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + float(timeout)
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
            self.raise_if_failed()
            if self._target < n_workers and self._error is None:
                raise ConfigError(
                    f"waiting for {n_workers} workers but cluster {self.name} aims at "
                    f"{self._target}; call scale({n_workers}) first."
                )
            if self.status in (Status.closing, Status.closed):
                raise ClusterClosedError(f"cluster {self.name} was closed while waiting.")
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(
                    self._timeout_message(joined, n_workers, float(timeout or 0))
                )
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
        """Return the boot log of every current instance, by instance name."""
        return {
            name: self.provider.instance_log(self.pool, name, tail_bytes=1 << 20)
            for name in sorted(self.plan)
        }

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


def _check_count(n: object, *, allow_zero: bool = False) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or (n == 0 and not allow_zero):
        least = "0" if allow_zero else "1"
        raise ConfigError(f"the number of workers must be a whole number >= {least}, got {n!r}.")


@atexit.register
def _close_all_clusters() -> None:
    for cluster in list(_live_clusters):
        with contextlib.suppress(Exception):
            cluster.close(timeout=30)
