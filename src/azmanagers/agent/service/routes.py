"""The detached service's HTTPS routes: token first, bounded bodies, JSON errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import tornado.web
from tornado.http1connection import HTTP1Connection

from azmanagers._version import __version__
from azmanagers.agent.service.gate import ConnectionGate
from azmanagers.agent.service.jobs import MAX_READ_BYTES, BadRequest, JobService
from azmanagers.agent.service.schema import schema
from azmanagers.agent.service.store import FINISHED
from azmanagers.detached import wire
from azmanagers.detached.wire import JobRequest, Ping, ServiceInfo, WireError

logger = logging.getLogger("azmanagers.detached")
access_log = logging.getLogger("azmanagers.detached.access")

MAX_WAIT_S = 60.0
"""The longest one wait request blocks; clients wait longer by asking again."""
DISCARD_FACTOR = 4
"""An authenticated job up to this many times the limit is read and dropped (never kept)
before its 413, so that a client still sending gets the answer rather than a reset."""
NO_BODY_BYTES = 64 * 1024
"""The most body a route that takes none reads (and drops)."""


class _EveryMethod(tuple[str, ...]):
    """Lets every method through tornado's first check, so that the token is checked first
    (``prepare`` then refuses a method its route does not take with a 405)."""

    def __contains__(self, method: object) -> bool:
        return True


@tornado.web.stream_request_body
class Handler(tornado.web.RequestHandler):
    """Checks the bearer token from the headers before any body is read (every route
    streams its body); answers errors as JSON ``{"error": message}``."""

    SUPPORTED_METHODS = _EveryMethod()  # an unknown method is refused after the token check
    open_methods: tuple[str, ...] = ()
    """Methods that need no token (the schema's GET)."""
    takes_body = False
    max_body_bytes: int | None = None
    """A route's own body limit, below the service's (None: the service's)."""

    def initialize(self, service: JobService, methods: tuple[str, ...] | None = None) -> None:
        self.service = service
        self.methods = methods
        """The route's methods (None: any, for the not-found route)."""
        self._chunks: list[bytes] = []
        self._size = 0

    def _body_limit(self) -> int:
        if not self.takes_body:
            return NO_BODY_BYTES
        limit = self.service.config.max_request_bytes
        return limit if self.max_body_bytes is None else min(limit, self.max_body_bytes)

    def _refuse(self, status: int, message: str, declared: int) -> BadRequest:
        """Refuse before the body: tornado then closes the connection without reading it."""
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # else tornado, seeing a length above its limit, would add a 400 of its own
            connection.set_max_body_size(max(declared, self._body_limit()))
        return BadRequest(status, message)

    def prepare(self) -> None:
        declared_text = self.request.headers.get("Content-Length", "0").strip()
        declared = int(declared_text) if declared_text.isdigit() else 0
        if self.request.method not in self.open_methods:
            if not self._token_ok():
                self.set_header("WWW-Authenticate", 'Bearer realm="azmanagers-detached"')
                raise self._refuse(401, "a valid bearer token is required", declared)
            gate: ConnectionGate | None = self.settings.get("gate")
            connection = self.request.connection
            if gate is not None and isinstance(connection, HTTP1Connection):
                gate.authenticated(connection.stream)
        if self.methods is not None and self.request.method not in self.methods:
            self.set_header("Allow", ", ".join(self.methods))
            raise self._refuse(
                405, f"{self.request.path} takes {', '.join(self.methods)}", declared
            )
        limit = self._body_limit()
        if declared > limit and not (self.takes_body and declared <= DISCARD_FACTOR * limit):
            raise self._refuse(413, _too_large(limit, self.takes_body), declared)
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(max(declared, limit))

    def _token_ok(self) -> bool:
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        digest = hashlib.sha256(token.strip().encode(errors="replace")).hexdigest()
        return scheme.lower() == "bearer" and hmac.compare_digest(
            digest, self.service.config.token_sha256
        )

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self.takes_body and self._size <= self._body_limit():
            self._chunks.append(chunk)
        else:
            self._chunks.clear()  # too large, or a route that takes no body: dropped

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # never the URI: its query string might carry a secret
        method, path = self.request.method, self.request.path
        if isinstance(value, BadRequest):  # a refused request is not a service error
            return
        if isinstance(value, tornado.web.HTTPError):
            access_log.warning("%d %s %s", value.status_code, method, path)
            return
        logger.error("uncaught exception in %s %s", method, path, exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, BadRequest):
            self.set_status(exc.status)
            message = exc.message
        elif isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "internal error (see the service log)"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def body(self) -> bytes:
        """The request's body (a route that ``takes_body``); 413 when it was too large."""
        limit = self._body_limit()
        if self._size > limit:
            raise BadRequest(413, _too_large(limit, self.takes_body))
        return b"".join(self._chunks)

    def send_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def number(self, name: str, default: float, *, least: float = 0.0) -> float:
        text = self.get_query_argument(name, None)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise BadRequest(400, f"query argument {name!r} must be a number") from None
        if not least <= value < float("inf"):
            raise BadRequest(400, f"query argument {name!r} must be at least {least:g}")
        return value


def _too_large(limit: int, takes_body: bool) -> str:
    if not takes_body:
        return "this route takes no request body"
    return (
        f"the request is larger than {limit} bytes: ship big inputs as files "
        "(Blob storage, or a path on the VM), not as arguments"
    )


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Log a finished request by its path only: never its query string (nor a token)."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "%d %s %s (%s) %.1fms",
        status,
        handler.request.method,
        handler.request.path,
        handler.request.remote_ip,
        1000.0 * handler.request.request_time(),
    )


class _Schema(Handler):
    open_methods = ("GET",)

    def get(self) -> None:
        self.send_json(schema())


class _Ping(Handler):
    def get(self) -> None:
        self.send_json(asdict(Ping(ok=True, name=self.service.config.name)))


class _VMInfo(Handler):
    def get(self) -> None:
        info = ServiceInfo(
            name=self.service.config.name,
            azmanagers=__version__,
            python=sys.version.split()[0],
            cpus=os.cpu_count() or 1,
            started_at=self.service.started_at,
            running_jobs=len(self.service.running),
        )
        self.send_json(info.to_json())


class _Jobs(Handler):
    takes_body = True

    def get(self) -> None:
        self.send_json({"jobs": [r.public() for r in self.service.store.all()]})

    def post(self) -> None:
        limit = self._body_limit()
        if self._size > limit:
            raise BadRequest(413, _too_large(limit, True))
        try:
            request = JobRequest.from_json(wire.decode_body(b"".join(self._chunks)))
        except WireError as exc:
            raise BadRequest(400, str(exc)) from None
        self.send_json(self.service.submit(request).public(), 201)


class _Job(Handler):
    def get(self, job_id: str) -> None:
        self.send_json(self.service.record(job_id).public())


class _Output(Handler):
    def get(self, job_id: str, stream: str) -> None:
        offset = int(self.number("offset", 0))
        limit = int(self.number("limit", MAX_READ_BYTES, least=1))
        data, size = self.service.read(job_id, stream, offset, limit)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header(wire.SIZE_HEADER, str(size))
        self.set_header(wire.NEXT_OFFSET_HEADER, str(min(offset, size) + len(data)))
        self.finish(data)


class _Wait(Handler):
    async def post(self, job_id: str) -> None:
        timeout = min(self.number("timeout", MAX_WAIT_S), MAX_WAIT_S)
        deadline = time.monotonic() + timeout
        record = self.service.record(job_id)
        changed: asyncio.Condition = self.settings["changed"]
        async with changed:  # woken as soon as any job finishes
            while record.status not in FINISHED:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), left)
                record = self.service.record(job_id)
        self.send_json(record.public())


class _Kill(Handler):
    async def post(self, job_id: str) -> None:
        record = await asyncio.to_thread(self.service.kill, job_id)
        changed: asyncio.Condition = self.settings["changed"]
        async with changed:
            changed.notify_all()
        self.send_json(record.public())


class _Result(Handler):
    def get(self, job_id: str) -> None:
        self.send_json(self.service.result(job_id).to_json())


class _NotFound(Handler):
    def prepare(self) -> None:
        super().prepare()
        raise BadRequest(404, f"no route {self.request.method} {self.request.path}")


def make_app(
    service: JobService,
    changed: asyncio.Condition | None = None,
    gate: ConnectionGate | None = None,
    *,
    extra_routes: Sequence[tuple[wire.Route, type[Handler]]] = (),
    settings: Mapping[str, Any] | None = None,
) -> tornado.web.Application:
    """The service's routes over ``service``; ``changed`` is notified when jobs finish;
    ``gate`` (the server's) learns which connections sent a valid token.

    ``extra_routes`` adds routes of a role of its own (a head node's), each handled by a
    ``Handler`` subclass, so they get the same token-first checks; ``settings`` are what
    those handlers find in ``self.settings`` (the head's cluster, say).

    Every request but the schema needs ``Authorization: Bearer <token>``, checked from the
    headers before any byte of a body is read; the VM keeps only the token's SHA-256. The
    server certificate is the VM's own; clients pin its fingerprint. Routes and records are
    those of ``azmanagers.detached.wire``; the OpenAPI document is ``schema.schema()``.
    """
    routes: list[tuple[wire.Route, type[Handler]]] = [
        (wire.SCHEMA, _Schema),
        (wire.PING, _Ping),
        (wire.VM, _VMInfo),
        (wire.JOBS, _Jobs),
        (wire.JOB, _Job),
        (wire.JOB_OUTPUT, _Output),
        (wire.JOB_WAIT, _Wait),
        (wire.JOB_KILL, _Kill),
        (wire.JOB_RESULT, _Result),
    ]
    taken = {route.template for route, _ in routes}
    for route, _handler in extra_routes:
        if route.template in taken:
            raise ValueError(f"route {route.template} is served twice")
        taken.add(route.template)
    routes += extra_routes
    own = {"changed", "gate", "log_function", "default_handler_class", "default_handler_args"}
    if own & set(settings or {}):
        raise ValueError(f"settings may not replace {sorted(own & set(settings or {}))}")
    return tornado.web.Application(
        [
            (route.pattern, handler, {"service": service, "methods": route.methods})
            for route, handler in routes
        ],
        default_handler_class=_NotFound,
        default_handler_args={"service": service},
        changed=changed or asyncio.Condition(),
        gate=gate,
        log_function=_log_request,
        **dict(settings or {}),
    )
