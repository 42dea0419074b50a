"""The head role: a named cluster's scheduler, its pool's reconciler, the service, autostop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from tornado.platform.asyncio import BaseAsyncIOLoop

from azmanagers.agent.head_routes import close_cluster, head_routes
from azmanagers.agent.service.app import config_from_payload, serve
from azmanagers.agent.service.jobs import JobService
from azmanagers.agent.shell import open_shells
from azmanagers.cluster.core import AzCluster
from azmanagers.config.settings import ClusterSettings
from azmanagers.errors import AzManagersError
from azmanagers.named.wire import (
    HeadStatus,
    NodeStatus,
    resize_target,
)
from azmanagers.tls import ClusterCredentials, KeyPair

logger = logging.getLogger("azmanagers.head")
T = TypeVar("T")

FAILURE_LOG_CHARS = 4000
"""How much of a failed node's boot log the status carries."""
CALL_TIMEOUT_S = 60.0
"""The longest a route waits for the cluster's loop."""
IDLE_CHECK_S = 5.0
"""How often the head looks at clients, tasks and jobs (for autostop)."""
STOP_GRACE_S = 2.0
"""After a stop or autostop, the head answers for this long before it ends (or deletes itself)."""


@dataclass(frozen=True)
class HeadPlan:
    """What the head was told to run (the ``cluster`` part of its boot payload)."""

    name: str
    template_name: str
    template: Mapping[str, Any]
    settings: ClusterSettings
    credentials: ClusterCredentials
    nodes: int
    env: Mapping[str, str]
    requirements: str | None
    autostop_s: float
    setup: str | None = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], host: str) -> HeadPlan:
        """Read the plan; the scheduler listens on ``host`` (the head's own address)."""
        part = payload["cluster"]
        known = {f.name for f in fields(ClusterSettings)}
        settings = ClusterSettings(**{k: v for k, v in part["settings"].items() if k in known})
        creds = part["credentials"]
        credentials = ClusterCredentials(
            ca=str(creds["ca"]),
            scheduler=KeyPair(**creds["scheduler"]),
            worker=KeyPair(**creds["worker"]),
            client=KeyPair(**creds["client"]),
        )
        return cls(
            name=str(payload["name"]),
            template_name=str(part["template_name"]),
            template=dict(part["template"]),
            settings=replace(settings, scheduler_host=host),
            credentials=credentials,
            nodes=int(part["nodes"]),
            env={str(k): str(v) for k, v in dict(part.get("env") or {}).items()},
            requirements=part.get("requirements") or None,
            autostop_s=float(part.get("autostop_s") or 0.0),
            setup=str(part["setup"]) if part.get("setup") else None,
        )


class Head:
    """The cluster the head runs, and what its routes and autostop read from it."""

    def __init__(self, plan: HeadPlan, cluster: AzCluster) -> None:
        self.plan = plan
        self.cluster = cluster
        self.started_at = time.time()
        self.busy_at = time.monotonic()
        """When the cluster last had a client, a task or a running job."""
        self.stopping: asyncio.Event | None = None
        self.stop_reason = ""
        self.closing = False
        self._resizing = threading.Lock()
        self._client: Any = None
        """A stop (asked, or autostop) is under way: routes answer 503."""
        self.jobs: JobService | None = None
        """The service's detached jobs (``detachat`` on the head): running ones keep it busy."""

    def status(self, boot_log: bool = False) -> HeadStatus:
        """The cluster now (called off the service's loop: it reads on the cluster's); with
        ``boot_log``, the end of the boot log of a node that has not joined (a provider call)."""
        status = self._on_cluster_loop(self._status())
        waiting = [n.name for n in status.nodes if n.state != "joined"]
        if not boot_log or not waiting:
            return status
        log = self.cluster.reconciler.instance_log(waiting[0])[-FAILURE_LOG_CHARS:]
        return replace(status, waiting_log=f"{waiting[0]}:\n{log or '(no boot log yet)'}")

    async def _status(self) -> HeadStatus:
        cluster = self.cluster
        scheduler = cluster.scheduler
        workers = {} if scheduler is None else dict(scheduler.workers)
        by_name = {str(ws.name): ws for ws in workers.values()}
        joined_at = dict(cluster.joined_at)  # epoch seconds
        removing = cluster.reconciler.known() - cluster.reconciler.plan
        names = sorted(cluster.reconciler.known() | set(by_name))
        nodes = []
        for name in names:
            ws = by_name.get(name)
            state = "joined" if ws is not None else "creating"
            if name in removing:
                state = "leaving"
            nodes.append(
                NodeStatus(
                    name=name,
                    state=state,
                    address="" if ws is None else str(ws.host),
                    joined_at=float(joined_at.get(name, 0.0)),
                )
            )
        error = ""
        try:
            cluster.raise_if_failed()
        except AzManagersError as exc:
            error = str(exc)
        clients, tasks = self._activity()
        failures = list(cluster.failures)
        return HeadStatus(
            name=self.plan.name,
            scheduler=cluster.scheduler_address,
            pool=cluster.pool,
            target=cluster.target,
            max_nodes=cluster.settings.max_instances,
            started_at=self.started_at,
            nodes=tuple(nodes),
            failures=tuple(f"{f[0]}: {f[1]}" for f in failures[-20:]),
            failure_log=str(failures[-1][2])[-FAILURE_LOG_CHARS:] if failures else "",
            error=error,
            clients=clients,
            tasks=tasks,
            idle_s=time.monotonic() - self.busy_at,
            autostop_s=self.plan.autostop_s,
        )

    def _on_cluster_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the cluster's event loop (where its scheduler lives) and wait."""
        io_loop = self.cluster.loop
        if not isinstance(io_loop, BaseAsyncIOLoop):  # Dask's loops are asyncio ones
            raise AzManagersError(f"cluster {self.plan.name} has no running event loop")
        return asyncio.run_coroutine_threadsafe(coro, io_loop.asyncio_loop).result(CALL_TIMEOUT_S)

    def _activity(self) -> tuple[int, int]:
        """Clients other than the scheduler's own, and tasks the scheduler holds."""
        scheduler = self.cluster.scheduler
        if scheduler is None:
            return 0, 0
        own = {"fire-and-forget"}  # and the head's own client (exec, setup)
        if self._client is not None:
            own.add(str(self._client.id))
        clients = sum(1 for c in scheduler.clients if c not in own)
        return clients, len(scheduler.tasks)

    def resize(self, body: object) -> HeadStatus:
        """Set the pool's target from a resize body (off the service's loop); two resizes at
        once are applied one after the other (``+1`` twice is ``+2``)."""
        with self._resizing:
            target = resize_target(body, self.cluster.target)
            self.cluster.scale(target)
        self.busy_at = time.monotonic()
        return self.status()

    def _failed(self) -> bool:
        try:
            self.cluster.raise_if_failed()
        except AzManagersError:
            return True
        return False

    def client(self) -> Any:
        """A Dask client of this cluster, in the head (for exec and setup on the nodes): made
        once, on first use; it is the head's own, not counted as activity."""
        with self._resizing:
            if self._client is None:
                from distributed import Client

                self._client = Client(
                    self.cluster, security=self.cluster.security, set_as_default=False
                )
            return self._client

    def busy(self) -> None:
        """Note activity now (a shell opened, a resize)."""
        self.busy_at = time.monotonic()

    def note_activity(self, jobs_running: int) -> float:
        """Mark the cluster busy when it has clients, tasks, ``jobs_running``, open shells or
        nodes still booting toward its target; return the seconds it has been idle."""
        clients, tasks = self._on_cluster_loop(self._activity_async())
        booting = self.cluster.nworkers() < self.cluster.target and not self._failed()
        if clients or tasks or jobs_running or open_shells() or booting:
            self.busy_at = time.monotonic()
        return time.monotonic() - self.busy_at

    async def _activity_async(self) -> tuple[int, int]:
        return self._activity()


def own_address(payload: Mapping[str, Any]) -> str:
    """The address the head's scheduler and service listen on: the payload's (a process-VM),
    the emulator's, else the VM's private address from IMDS (all addresses if IMDS fails)."""
    explicit = payload.get("host") or os.environ.get("AZMANAGERS_VM_ADDRESS")
    if explicit:
        return str(explicit)
    from azmanagers.agent import imds

    try:
        return imds.private_address()
    except (OSError, KeyError, IndexError, TypeError):
        return "0.0.0.0"


async def run_head(
    payload: Mapping[str, Any], state_dir: Path, ready: asyncio.Future[int] | None = None
) -> str:
    """Run the cluster and the service until stopped; return why it stopped."""
    host = own_address(payload)
    plan = HeadPlan.from_payload(payload, host)
    config = config_from_payload(dict(payload), state_dir)
    from azmanagers.config.template_schema import template_provider
    from azmanagers.providers import get_provider

    provider = get_provider(template_provider(plan.template), plan.template)
    cluster = await asyncio.to_thread(
        AzCluster,
        plan.template_name,
        provider,
        plan.settings,
        template=plan.template,
        env=plan.env,
        requirements=plan.requirements,
        name=plan.name,
        credentials=plan.credentials,
        setup=plan.setup,
    )
    head = Head(plan, cluster)
    head.stopping = asyncio.Event()
    if plan.nodes:
        await asyncio.to_thread(cluster.scale, plan.nodes)
    logger.info("head of %s: scheduler at %s", plan.name, cluster.scheduler_address)
    routes = head_routes()
    jobs = JobService(config)
    head.jobs = jobs
    service = asyncio.ensure_future(
        serve(config, ready, extra_routes=routes, settings={"head": head}, service=jobs)
    )
    try:
        await _watch(head, service)
    finally:
        if not service.done():
            await asyncio.sleep(STOP_GRACE_S)  # the stop's answer goes out
            service.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await service
        if cluster.status.name not in ("closed",):
            await asyncio.to_thread(close_cluster, cluster)
    return head.stop_reason


async def _watch(head: Head, service: asyncio.Future[None]) -> None:
    """Wait for a stop, the service's end or autostop."""
    if head.stopping is None:
        raise RuntimeError("the head has no stop event")
    while not service.done():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(head.stopping.wait(), IDLE_CHECK_S)
        if head.stopping.is_set():
            return
        if head.plan.autostop_s <= 0:
            continue
        running = 0 if head.jobs is None else len(head.jobs.running)
        idle = await asyncio.to_thread(head.note_activity, running)
        if idle >= head.plan.autostop_s:
            head.stop_reason = f"autostop: idle for {idle:.0f} s"
            head.closing = True
            logger.info("head of %s: %s; stopping", head.plan.name, head.stop_reason)
            return
    service.result()  # the service ended by itself: say why


def _delete_self(method: str) -> None:
    """Have this VM deleted from outside the head's process (as a finished detached job)."""
    if method == "local":
        folder = os.environ.get("AZMANAGERS_INSTANCE_DIR", "")
        if not folder:
            return
        command = ["local", folder]
    elif method == "azure":
        command = ["azure"]
    else:
        return
    env = {k: v for k, v in os.environ.items() if k != "AZMANAGERS_INSTANCE_DIR"}
    subprocess.Popen(
        [sys.executable, "-m", "azmanagers.agent.selfdelete", *command, "1"],
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(payload_path: str) -> int:
    """Entry point of the head role: run until stopped; after an autostop, delete this VM."""
    from azmanagers.agent.service.app import make_log_private
    from azmanagers.agent.worker import load_payload

    make_log_private()
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        payload = load_payload(payload_path)
        HeadPlan.from_payload(payload, own_address(payload))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        print(f"azmanagers head: cannot read the boot payload: {exc}", flush=True)
        return 2
    state_dir = Path(payload_path).resolve().parent / "head"
    reason = ""
    with contextlib.suppress(KeyboardInterrupt):
        reason = asyncio.run(run_head(payload, state_dir))
    logger.info("head of %s ended: %s", payload.get("name"), reason or "interrupted")
    if reason.startswith("autostop"):
        _delete_self(str(payload.get("self_delete", "")))
    return 0
