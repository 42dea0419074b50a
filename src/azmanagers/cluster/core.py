"""AzCluster: a Dask cluster whose workers are provider instances, kept true by a Reconciler."""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.cluster import Cluster
from distributed.protocol.pickle import dumps as pickle_dumps
from distributed.scheduler import Scheduler

from azmanagers.agent.logforward import LogForwardPlugin
from azmanagers.cluster import guard as scheduler_guard
from azmanagers.cluster.hooks import ClusterHooks, SchedulerWorkers, emit_worker_log
from azmanagers.cluster.reconciler import Reconciler
from azmanagers.cluster.scaling import CheckedScaling
from azmanagers.cluster.scheduler import dashboard_link, parse_dashboard_address, start_scheduler
from azmanagers.cluster.spec import worker_pool_spec
from azmanagers.cluster.teardown import LIVE_CLUSTERS, stop_and_delete
from azmanagers.cluster.waits import (
    ProgressCallback,
    check_count,
    check_timeout,
    wait_for_workers,
)
from azmanagers.config.settings import ClusterSettings
from azmanagers.errors import AzManagersError, ClusterClosedError, ConfigError
from azmanagers.providers.base import Provider
from azmanagers.tls import ClusterCredentials, make_cluster_credentials

logger = logging.getLogger("azmanagers.cluster")

WORKER_LOG_BUFFER = 2000


class AzCluster(Cluster):
    """A Dask cluster on provider instances (process-VMs locally, a scale set on Azure).

    ``scale(n)`` records the target; a ``Reconciler`` converges on it: it creates instances,
    deletes failed ones and those that do not join by their deadline, and replaces them within
    a budget (``max_replacements`` per ten minutes). Scheduler, workers and client talk TLS
    with a CA of this cluster's own; nothing is served over plain HTTP unless ``dashboard``.

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
    name
        The cluster's (and its pool's) name; default the template's name and 6 hex digits.
        A named cluster's head passes the name its record holds.
    credentials
        The cluster's TLS (CA and key pairs); default fresh ones. A named cluster's head
        gets them from the caller, who keeps the client's pair to connect later.
    setup
        A bash script each instance runs before its worker joins (a named cluster's setup).
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
        name: str | None = None,
        credentials: ClusterCredentials | None = None,
        setup: str | None = None,
    ) -> None:
        self.dashboard_address = (
            parse_dashboard_address(settings.dashboard_address) if settings.dashboard else None
        )
        """Where the dashboard listens (checked before anything starts); None: no dashboard."""
        name = name or f"{template_name}-{uuid.uuid4().hex[:6]}"
        self.template = dict(template or {})
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        self.template_name = template_name
        self.provider = provider
        self.settings = settings
        self.pool = name
        self.requirements = requirements
        self.setup = setup
        self.env = dict(env or {})
        self.join_timeout_s = (
            settings.join_timeout_s
            + (settings.env_build_timeout_s if requirements else 0.0)
            + (settings.setup_timeout_s if setup else 0.0)
        )
        """Seconds an instance has to join (longer when it builds a custom environment)."""
        self.credentials = credentials or make_cluster_credentials(
            name, [settings.scheduler_host, "localhost"]
        )
        self.security = self.credentials.security()
        self.scheduler: Scheduler | None = None
        self.worker_log_records: collections.deque[Mapping[str, Any]] = collections.deque(
            maxlen=WORKER_LOG_BUFFER
        )
        self._workers = SchedulerWorkers(self)
        self.reconciler = Reconciler(
            provider,
            self.pool,
            self._joined_names,
            settings,
            join_timeout_s=self.join_timeout_s,
            workers=self._workers,
            name=name,
        )
        self.failures = self.reconciler.failures
        """(instance, reason, boot-log tail) of the instances that failed, newest last."""
        self.evicted = self.reconciler.evicted
        """Instances that disappeared without our asking (spot evictions), oldest first."""
        self.joined_at = self.reconciler.joined_at
        """When each instance's worker first joined (epoch seconds), by instance name."""
        self._scaling = CheckedScaling(
            name, template_name, self.template, provider, settings, self.reconciler
        )
        """The target, checked against max_instances and the quota (off the loop on it)."""
        self._reconcile_task: asyncio.Task[None] | None = None
        LIVE_CLUSTERS.add(self)
        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException as exc:
                try:
                    self.close()
                except AzManagersError as close_error:  # a pool left behind: say so
                    raise close_error from exc
                raise

    # -- start and stop ------------------------------------------------------------------
    async def _start(self) -> None:
        if self.status == Status.running:
            return
        self.status = Status.starting
        self.scheduler = await start_scheduler(
            self.settings.scheduler_host,
            self.security,
            dashboard_address=self.dashboard_address,
        )
        if not self.settings.workers_can_submit:
            scheduler_guard.guard(self.scheduler, self.credentials.client_common_name())
        self.scheduler.add_plugin(ClusterHooks(self.reconciler, self._on_worker_log))
        await self.scheduler.register_worker_plugin(
            None, pickle_dumps(LogForwardPlugin()), LogForwardPlugin.name, idempotent=True
        )
        self.scheduler_comm = rpc(
            self.scheduler.address,
            connection_args=self.security.get_connection_args("client"),
        )
        await super()._start()
        spec = worker_pool_spec(
            self.pool,
            scheduler=self.scheduler.address,
            credentials=self.credentials,
            settings=self.settings,
            tags=self.reconciler.tags,
            template=self.template,
            env=self.env,
            requirements=self.requirements,
            setup=self.setup,
        )
        await self.reconciler.gate.acall("creating the pool", self.provider.create_pool, spec)
        self.reconciler.changed()
        self._reconcile_task = asyncio.ensure_future(self.reconciler.run())
        logger.info("cluster %s: scheduler at %s", self.name, self.scheduler.address)

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        self.status = Status.closing
        if self._adaptive is not None:
            self._adaptive.stop()
        left = await stop_and_delete(self.reconciler, self._reconcile_task)
        self.status = Status.running  # let the base class close its comms
        await super()._close()
        if self.scheduler is not None:
            await self.scheduler.close()
        LIVE_CLUSTERS.discard(self)
        if left is not None:
            raise left

    def close(self, timeout: float | None = None) -> Any:
        """Delete every instance, stop the scheduler and the event loop.

        Raises ``ThrottledError`` or ``ProviderError`` (after closing everything local) when
        the pool could not be deleted: the message names it and says what deletes it.
        """
        try:
            return super().close(timeout)
        finally:
            if not self.asynchronous:
                self._loop_runner.stop()

    # -- scaling ---------------------------------------------------------------------------
    def scale(self, n: int = 0, memory: Any = None, cores: Any = None) -> None:
        """Record a target of ``n`` workers; the reconciler converges on it."""
        del memory, cores
        check_count(n, allow_zero=True)
        self._check_open()
        self._scaling.check_limit(n)
        self._scaling.scale_to(n)

    def grow(self, n: int) -> int:
        """Raise the target by ``n`` (atomically) and return the new target."""
        check_count(n)
        self._check_open()
        self._scaling.check_limit(self.target + n)
        self._scaling.check_capacity(n)
        return self.reconciler.grow(n, self._scaling.check_limit)

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
        Raises ``ClusterClosedError`` on a closed cluster.
        """
        self._check_open()
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
        return self.reconciler.target

    async def scale_down(self, workers: Iterable[str]) -> None:
        """Remove these workers (names or addresses) and lower the target by as many."""
        names = self.reconciler.shrink(self._workers.names_of(workers, self.reconciler.known()))
        if names:
            await self.reconciler.retire(names)

    def remove_workers(self, workers: Iterable[str]) -> None:
        """Retire and delete these workers (names or addresses), blocking until done."""
        self._check_open()
        self.sync(self.scale_down, list(workers))

    @property
    def plan(self) -> set[str]:
        """The instances that exist and are not being removed."""
        return self.reconciler.plan

    @property
    def requested(self) -> set[str]:
        return self.plan

    # -- what the reconciler knows ------------------------------------------------------
    @property
    def join_times(self) -> dict[str, float]:
        """Seconds from each current instance's creation to its worker joining, by name."""
        return self.reconciler.join_times

    @property
    def reconcile_cycles(self) -> int:
        """How many reconcile cycles have completed."""
        return self.reconciler.cycles

    # -- workers and waiting -------------------------------------------------------------
    def _joined_names(self) -> set[str]:
        if self.scheduler is None:
            return set()
        return {str(ws.name) for ws in list(self.scheduler.workers.values())}

    def _on_worker_log(self, msg: Mapping[str, Any]) -> None:
        self.worker_log_records.append(msg)
        emit_worker_log(msg)

    def worker_names(self) -> list[str]:
        """Return the names of the workers that have joined, sorted."""
        return sorted(self._joined_names())

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
        error = self.reconciler.errors.current
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

        ``timeout``: a finite number of seconds (default ``default_wait_s()``: a wait always
        has a deadline); ``progress(joined, n_workers)`` is called as the count changes.
        Raises what ``waits.wait_for_workers`` says (``WaitTimeoutError`` at the deadline).
        """
        check_count(n_workers)
        wait_s = self.default_wait_s() if timeout is None else check_timeout(timeout)
        self._check_open()
        wait_for_workers(self, n_workers, wait_s, progress)

    @property
    def dashboard_link(self) -> str:
        """The dashboard's URL at the address it is bound to ('' without a dashboard).

        A dashboard on every interface (``0.0.0.0``) is linked by this machine's host name.
        """
        if self.dashboard_address is None or self.scheduler is None:
            return ""
        return dashboard_link(self.scheduler)

    def instance_logs(self) -> dict[str, str]:
        """Return the boot log of every instance this cluster has had, by instance name."""
        return self.reconciler.instance_logs()

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> Any:
        """Return Dask's logs plus every instance's boot log (keys ``boot:<instance>``).

        Raises ``ClusterClosedError`` on a closed cluster (its scheduler is gone).
        """
        self._check_open()
        logs = super().get_logs(cluster=cluster, scheduler=scheduler, workers=workers)
        for name, text in self.instance_logs().items():
            logs[f"boot:{name}"] = text
        return logs
