"""The head's own routes on its HTTPS service: status, resize, shell, exec, setup and stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from azmanagers.agent.head_exec import exec_on_nodes, setup_on_nodes
from azmanagers.agent.service.jobs import BadRequest
from azmanagers.agent.service.routes import Handler
from azmanagers.agent.shell import ShellLimitError, start_shell
from azmanagers.detached.wire import Route, WireError, decode_body
from azmanagers.errors import AzManagersError, ConfigError, DetachedServiceError
from azmanagers.named.wire import (
    HEAD_EXEC,
    HEAD_RESIZE,
    HEAD_SETUP,
    HEAD_SHELL,
    HEAD_STATUS,
    HEAD_STOP,
    ExecRequest,
    NodeResult,
    ShellRequest,
)

if TYPE_CHECKING:
    from azmanagers.agent.head import Head
    from azmanagers.cluster.core import AzCluster

logger = logging.getLogger("azmanagers.head")

SMALL_BODY_BYTES = 4096
"""The most a resize's body may have."""


def _refuse_if_stopping(head: Head) -> None:
    if head.closing:
        raise BadRequest(503, f"cluster {head.plan.name} is stopping ({head.stop_reason})")


class _Status(Handler):
    async def get(self) -> None:
        head: Head = self.settings["head"]
        _refuse_if_stopping(head)
        boot_log = self.get_query_argument("boot_log", "0") == "1"
        try:
            status = await asyncio.to_thread(head.status, boot_log)
        except RuntimeError:  # the cluster's loop ended under the call: it is stopping
            _refuse_if_stopping(head)
            raise
        self.send_json(status.to_json())


def _head_and_body(handler: Handler) -> tuple[Head, object]:
    """The head (503 while it stops) and the request's JSON body (400 when it is not JSON)."""
    head: Head = handler.settings["head"]
    _refuse_if_stopping(head)
    try:
        return head, decode_body(handler.body())
    except WireError as exc:
        raise BadRequest(400, str(exc)) from None


class _Resize(Handler):
    takes_body = True
    max_body_bytes = SMALL_BODY_BYTES

    async def post(self) -> None:
        head, body = _head_and_body(self)
        try:
            status = await asyncio.to_thread(head.resize, body)
        except WireError as exc:
            raise BadRequest(400, str(exc)) from None
        except AzManagersError as exc:  # past max_instances, the quota, a closed cluster
            raise BadRequest(409, str(exc)) from None
        self.send_json(status.to_json())


class _Shell(Handler):
    takes_body = True
    max_body_bytes = 256 * 1024  # a command of up to 128 KiB, as JSON

    async def post(self) -> None:
        head, body = _head_and_body(self)
        try:
            request = ShellRequest.from_json(body)
        except WireError as exc:
            raise BadRequest(400, str(exc)) from None
        credentials = head.plan.credentials
        tls = {
            "ca": credentials.ca,
            "cert": credentials.scheduler.cert,
            "key": credentials.scheduler.key,
        }
        host = head.plan.settings.scheduler_host
        try:
            port = await start_shell(
                host,
                tls,
                credentials.client_common_name(),
                request.command,
                request.rows,
                request.cols,
                request.tty,
            )
        except ShellLimitError as exc:
            raise BadRequest(429, str(exc)) from None
        head.busy()
        # listening on every address: the caller uses the address it knows the head by
        self.send_json({"host": "" if host in ("0.0.0.0", "::") else host, "port": port})


async def _on_nodes(handler: Handler, run: Callable[[Any], list[NodeResult]]) -> None:
    """Run ``run`` with the head's client off the service's loop; answer its results."""
    head: Head = handler.settings["head"]
    head.busy()
    try:
        results = await asyncio.to_thread(lambda: run(head.client()))
    except ConfigError as exc:  # an unknown node
        raise BadRequest(400, str(exc)) from None
    except DetachedServiceError as exc:  # a node's failure
        raise BadRequest(502, str(exc)) from None
    head.busy()
    handler.send_json({"results": [r.to_json() for r in results]})


class _Exec(Handler):
    takes_body = True
    max_body_bytes = 512 * 1024  # a command of up to 128 KiB and its env, as JSON

    async def post(self) -> None:
        _, body = _head_and_body(self)
        try:
            request = ExecRequest.from_json(body)
        except WireError as exc:
            raise BadRequest(400, str(exc)) from None
        await _on_nodes(
            self,
            lambda client: exec_on_nodes(
                client,
                request.command,
                node=request.node,
                timeout_s=request.timeout_s,
                env=request.env,
            ),
        )


class _Setup(Handler):
    takes_body = True
    max_body_bytes = SMALL_BODY_BYTES

    async def post(self) -> None:
        head, body = _head_and_body(self)
        if not isinstance(body, dict) or not isinstance(body.get("only_new", False), bool):
            raise BadRequest(400, 'a setup takes {"only_new": true|false}')
        script = head.plan.setup
        if not script:
            raise BadRequest(400, f"cluster {head.plan.name} has no setup script")
        only_new = bool(body.get("only_new", False))
        timeout_s = head.plan.settings.setup_timeout_s
        await _on_nodes(
            self,
            lambda client: setup_on_nodes(client, script, only_new=only_new, timeout_s=timeout_s),
        )


class _Stop(Handler):
    async def post(self) -> None:
        head: Head = self.settings["head"]
        if not head.closing:
            head.stop_reason = "stopped on request"
        head.closing = True
        deleted = await asyncio.to_thread(close_cluster, head.cluster)
        self.send_json({"pool_deleted": deleted})
        if head.stopping is not None:
            head.stopping.set()


def close_cluster(cluster: AzCluster) -> bool:
    """Delete the pool and stop the scheduler; whether the pool is gone."""
    try:
        cluster.close()
    except AzManagersError as exc:
        logger.error("the pool of %s was not deleted: %s", cluster.name, exc)
        return False
    return True


def head_routes() -> list[tuple[Route, type[Handler]]]:
    """The head's routes and their handlers (they find the ``Head`` in the app's settings)."""
    return [
        (HEAD_STATUS, _Status),
        (HEAD_RESIZE, _Resize),
        (HEAD_STOP, _Stop),
        (HEAD_SHELL, _Shell),
        (HEAD_EXEC, _Exec),
        (HEAD_SETUP, _Setup),
    ]
