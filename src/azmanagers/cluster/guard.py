"""Who may ask what of a cluster's scheduler: workers the worker protocol, the caller all of it.

Dask lets any certificate its CA signed act as a client, and a client may run code in the
scheduler's process (``run_on_scheduler``, scheduler plugins, graphs unpickled there). The
scheduler runs in the caller's process, so a worker VM (running code the caller shipped, on
a network the caller does not control) could reach the caller's machine. This guard checks
the peer's certificate on every request: only the caller's client certificate may do more
than a worker needs, and a worker may register, unregister or retire only a worker on the
address it connects from (all workers share one certificate). ``workers_can_submit=True``
turns the guard off (tasks that call ``get_client()``, or use Dask's Lock, Queue, Variable
or Event, need that).
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

WORKER_OPS = frozenset(
    {
        "register-worker",
        "heartbeat_worker",
        "unregister",
        "retire_workers",  # a worker retiring itself (spot eviction, close_gracefully)
        "get_metadata",  # the agent's liveness watchdog
        "identity",
        "versions",
        "who_has",
        "log_event",
        "register_nanny",
    }
)
"""Requests a worker or nanny makes of the scheduler over its own connections."""
OWN_WORKER_OPS = frozenset({"register-worker", "unregister", "retire_workers"})
"""Worker requests that name a worker: allowed for a worker on the peer's own address."""
WORKER_OP_PREFIXES = ("shuffle",)  # P2P shuffle: workers coordinate through the scheduler
WORKER_STREAM_OPS = frozenset(
    {
        "task-finished",
        "task-erred",
        "release-worker-data",
        "reschedule",
        "long-running",
        "add-keys",
        "request-refresh-who-has",
        "steal-response",
        "keep-alive",
        "log-event",
        "worker-status-change",
    }
)
"""Messages a worker sends on its batched stream to the scheduler."""
OTHERS_REFUSAL = (
    "azmanagers refused '{op}' from a worker's certificate for {detail}: a worker may "
    "register, unregister or retire only itself (a worker on the address it connects from)"
)
REFUSAL = (
    "azmanagers refused '{op}' from a worker's certificate: only the caller may submit work "
    "to, or run code on, the scheduler. To let tasks submit tasks (get_client, worker_client, "
    "Lock, Queue, Variable, Event), start the cluster with workers_can_submit=True; a worker "
    "can then run code in the caller's process."
)


class WorkerRefusedError(PermissionError):
    """A worker's certificate asked for something only the caller may do."""


def peer_common_name(comm: Any) -> str | None:
    """Return the common name of the peer's TLS certificate, or None without one."""
    extra = getattr(comm, "extra_info", None) or {}
    cert = extra.get("peercert") or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _expects_comm(handler: Callable[..., Any]) -> bool:
    """Dask passes the comm to handlers whose first parameter is named ``comm``."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return False
    return bool(params) and next(iter(params)) == "comm"


def _checked(
    op: str, handler: Callable[..., Any], refusal: Callable[[Any, dict[str, Any]], str | None]
) -> Callable[..., Any]:
    """Wrap a request handler so that ``refusal(comm, kwargs)`` may refuse the request."""
    wants_comm = _expects_comm(handler)

    async def guarded(comm: Any, **kwargs: Any) -> Any:
        message = refusal(comm, kwargs)
        if message is not None:
            logger.warning("refused %r from %s: %s", op, comm.peer_address, message)
            if op == "register-client":  # a Client reads one stream-start message, no reply
                await comm.write([{"op": "stream-start", "error": message}])
                await comm.close()
                return None
            raise WorkerRefusedError(message)
        result = handler(comm, **kwargs) if wants_comm else handler(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    guarded.__name__ = getattr(handler, "__name__", op)
    # Dask passes optional arguments (serializers) only to handlers that name them
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        params = []
    rest = [p for p in params if p.name != "comm"]
    comm_param = inspect.Parameter("comm", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    guarded.__signature__ = inspect.Signature([comm_param, *rest])  # type: ignore[attr-defined]
    return guarded


class _CallerOnly:
    """Only the caller's certificate may make this request."""

    def __init__(self, op: str, caller: str) -> None:
        self.op, self.caller = op, caller

    def __call__(self, comm: Any, kwargs: dict[str, Any]) -> str | None:
        return None if peer_common_name(comm) == self.caller else REFUSAL.format(op=self.op)


def _host(address: str) -> str:
    from distributed.comm.addressing import get_address_host

    return str(get_address_host(address))


DEFAULT_LOOPBACK_SOURCES = frozenset({"127.0.0.1", "::1"})
"""Where the kernel's connections to any loopback address come from unless a process binds
another source address."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def same_host(peer: str, target: str) -> bool:
    """Whether a connection from ``peer`` may come from the host ``target`` is on.

    Process-VMs on this machine listen on loopback addresses of their own (``127.N.x.y``),
    but their connections come from ``127.0.0.1`` (the kernel's source for any loopback
    destination): so a peer on the default loopback source is the same host as any loopback
    target. A peer that bound another loopback address is only the host of that address.
    """
    if peer == target:
        return True
    return peer in DEFAULT_LOOPBACK_SOURCES and _is_loopback(target)


class _OwnWorkerOnly:
    """A worker's certificate may register, unregister or retire only workers on its own host.

    All workers of a cluster share one certificate, so the peer's address is what tells them
    apart: on Azure every instance has an address of its own.
    """

    def __init__(self, op: str, scheduler: Any, caller: str) -> None:
        self.op, self.scheduler, self.caller = op, scheduler, caller

    def targets(self, kwargs: dict[str, Any]) -> list[str] | None:
        """The worker addresses the request acts on; None when it lets the scheduler choose."""
        if self.op in ("register-worker", "unregister"):
            return [self.scheduler.coerce_address(kwargs.get("address", ""))]
        if kwargs.get("workers"):
            return [str(address) for address in kwargs["workers"]]
        if kwargs.get("names"):
            names = {str(name) for name in kwargs["names"]}  # as Dask matches them
            return [ws.address for ws in self.scheduler.workers.values() if str(ws.name) in names]
        return None

    def __call__(self, comm: Any, kwargs: dict[str, Any]) -> str | None:
        if peer_common_name(comm) == self.caller:
            return None
        targets = self.targets(kwargs)
        if targets is None:
            return OTHERS_REFUSAL.format(op=self.op, detail="workers the scheduler would choose")
        peer = _host(comm.peer_address)
        others = sorted(address for address in targets if not same_host(peer, _host(address)))
        if others:
            return OTHERS_REFUSAL.format(op=self.op, detail=", ".join(others))
        return None


def _not_from_worker_streams(op: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    def refused(kwargs: dict[str, Any]) -> bool:
        if "worker" in kwargs:  # it came on a worker's stream: Dask adds worker=<address>
            logger.warning("refused %r on the stream of worker %s", op, kwargs["worker"])
            return True
        return False

    if inspect.iscoroutinefunction(handler):

        async def guarded_async(**kwargs: Any) -> Any:
            return None if refused(kwargs) else await handler(**kwargs)

        return guarded_async

    def guarded(**kwargs: Any) -> Any:
        return None if refused(kwargs) else handler(**kwargs)

    return guarded


class _GuardedHandlers(dict[str, Any]):
    """The scheduler's request handlers; those beyond the worker protocol check the peer."""

    def __init__(self, handlers: dict[str, Any], scheduler: Any, caller: str) -> None:
        super().__init__(handlers)
        self.scheduler, self.caller = scheduler, caller

    def __getitem__(self, op: str) -> Any:
        handler = super().__getitem__(op)
        if op in OWN_WORKER_OPS:
            return _checked(op, handler, _OwnWorkerOnly(op, self.scheduler, self.caller))
        if op in WORKER_OPS or op.startswith(WORKER_OP_PREFIXES):
            return handler
        return _checked(op, handler, _CallerOnly(op, self.caller))


class _GuardedStreamHandlers(dict[str, Any]):
    """The scheduler's stream handlers; a worker's stream carries worker messages only."""

    def __getitem__(self, op: str) -> Any:
        handler = super().__getitem__(op)
        if op in WORKER_STREAM_OPS:
            return handler
        return _not_from_worker_streams(op, handler)


def guard(scheduler: Any, caller_common_name: str) -> None:
    """Restrict ``scheduler`` so that only ``caller_common_name``'s certificate is a client.

    Handlers added later (scheduler plugins, extensions) are guarded too: the check happens
    when a request is dispatched.
    """
    scheduler.handlers = _GuardedHandlers(scheduler.handlers, scheduler, caller_common_name)
    scheduler.stream_handlers = _GuardedStreamHandlers(scheduler.stream_handlers)
