"""The detached service: an HTTPS API on a VM that runs jobs independent of the caller."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import ssl
import stat
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.http1connection import HTTP1Connection

from azmanagers._version import __version__
from azmanagers.agent.service.jobs import (
    MAX_READ_BYTES,
    BadRequest,
    JobService,
    ServiceConfig,
)
from azmanagers.agent.service.schema import schema
from azmanagers.agent.service.store import FINISHED
from azmanagers.detached import wire
from azmanagers.detached.wire import JobRequest, Ping, ServiceInfo, WireError

logger = logging.getLogger("azmanagers.detached")
access_log = logging.getLogger("azmanagers.detached.access")

MAX_WAIT_S = 60.0
"""The longest one wait request blocks; clients wait longer by asking again."""
ADOPTED_POLL_S = 0.5
"""How often the service looks at jobs it adopted after a restart (not its children)."""
DISCARD_FACTOR = 4
"""An authenticated job up to this many times the limit is read and dropped (never kept)
before its 413, so that a client still sending gets the answer rather than a reset."""
NO_BODY_BYTES = 64 * 1024
"""The most body a route that takes none reads (and drops)."""
MAX_HEADER_BYTES = 64 * 1024
IDLE_S = 120.0
"""A connection idle this long is closed; also the longest its request headers may take."""


@tornado.web.stream_request_body
class _Handler(tornado.web.RequestHandler):
    """Checks the bearer token from the headers before any body is read (every route
    streams its body); answers errors as JSON ``{"error": message}``."""

    authenticated = True
    takes_body = False

    def initialize(self, service: JobService) -> None:
        self.service = service
        self._chunks: list[bytes] = []
        self._size = 0

    def _body_limit(self) -> int:
        return self.service.config.max_request_bytes if self.takes_body else NO_BODY_BYTES

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
        if self.authenticated and not self._token_ok():
            self.set_header("WWW-Authenticate", 'Bearer realm="azmanagers-detached"')
            raise self._refuse(401, "a valid bearer token is required", declared)
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


class _Schema(_Handler):
    authenticated = False

    def get(self) -> None:
        self.send_json(schema())


class _Ping(_Handler):
    def get(self) -> None:
        self.send_json(asdict(Ping(ok=True, name=self.service.config.name)))


class _VMInfo(_Handler):
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


class _Jobs(_Handler):
    takes_body = True

    def get(self) -> None:
        self.send_json({"jobs": [r.public() for r in self.service.store.all()]})

    def post(self) -> None:
        limit = self._body_limit()
        if self._size > limit:
            raise BadRequest(413, _too_large(limit, True))
        try:
            body = json.loads(b"".join(self._chunks) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(400, "the body must be a JSON object") from None
        try:
            request = JobRequest.from_json(body)
        except WireError as exc:
            raise BadRequest(400, str(exc)) from None
        self.send_json(self.service.submit(request).public(), 201)


class _Job(_Handler):
    def get(self, job_id: str) -> None:
        self.send_json(self.service.record(job_id).public())


class _Output(_Handler):
    def get(self, job_id: str, stream: str) -> None:
        offset = int(self.number("offset", 0))
        limit = int(self.number("limit", MAX_READ_BYTES, least=1))
        data, size = self.service.read(job_id, stream, offset, limit)
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header(wire.SIZE_HEADER, str(size))
        self.set_header(wire.NEXT_OFFSET_HEADER, str(min(offset, size) + len(data)))
        self.finish(data)


class _Wait(_Handler):
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


class _Kill(_Handler):
    async def post(self, job_id: str) -> None:
        record = await asyncio.to_thread(self.service.kill, job_id)
        changed: asyncio.Condition = self.settings["changed"]
        async with changed:
            changed.notify_all()
        self.send_json(record.public())


class _Result(_Handler):
    def get(self, job_id: str) -> None:
        self.send_json(self.service.result(job_id).to_json())


class _NotFound(_Handler):
    def prepare(self) -> None:
        super().prepare()
        raise BadRequest(404, f"no route {self.request.method} {self.request.path}")


def make_app(
    service: JobService, changed: asyncio.Condition | None = None
) -> tornado.web.Application:
    """The service's routes over ``service``; ``changed`` is notified when jobs finish.

    Every request but the schema needs ``Authorization: Bearer <token>``, checked from the
    headers before any byte of a body is read; the VM keeps only the token's SHA-256. The
    server certificate is the VM's own; clients pin its fingerprint. Routes and records are
    those of ``azmanagers.detached.wire``; the OpenAPI document is ``schema.schema()``.
    """
    args = {"service": service}
    routes: list[tuple[wire.Route, type[_Handler]]] = [
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
    return tornado.web.Application(
        [(route.pattern, handler, args) for route, handler in routes],
        default_handler_class=_NotFound,
        default_handler_args=args,
        changed=changed or asyncio.Condition(),
        log_function=_log_request,
    )


async def serve(config: ServiceConfig, ready: asyncio.Future[int] | None = None) -> None:
    """Run the service until cancelled; ``ready`` gets the port once it listens."""
    service = JobService(config)
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(exited.set)

    service.on_exit = wake
    changed = asyncio.Condition()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.cert_file), str(config.key_file))
    server = tornado.httpserver.HTTPServer(
        make_app(service, changed),
        ssl_options=context,
        max_body_size=config.max_request_bytes,  # each request sets its own (prepare)
        max_header_size=MAX_HEADER_BYTES,
        idle_connection_timeout=IDLE_S,  # tornado's bound on the headers' time, too
        body_timeout=config.body_timeout_s,
    )
    sockets = tornado.netutil.bind_sockets(config.port, config.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    (config.state_dir / "port").write_text(str(port))
    logger.info("detached service %s listening on %s:%d", config.name, config.host, port)
    if ready is not None:
        ready.set_result(port)
    try:
        while True:
            # A job's exit wakes the loop at once; adopted jobs (not our children) are
            # looked at every ADOPTED_POLL_S.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(exited.wait(), ADOPTED_POLL_S)
            exited.clear()
            if service.poll():
                async with changed:
                    changed.notify_all()
    finally:
        server.stop()
        service.close()


def config_from_payload(payload: dict[str, Any], state_dir: Path) -> ServiceConfig:
    """Write the payload's key pair to ``state_dir`` (0600) and return the service config."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = payload["tls"]
    cert_file, key_file = state_dir / "service.pem", state_dir / "service.key"
    for path, text in ((cert_file, tls["cert"]), (key_file, tls["key"])):
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text)
    return ServiceConfig(
        name=str(payload["name"]),
        state_dir=state_dir,
        token_sha256=str(payload["token_sha256"]),
        cert_file=cert_file,
        key_file=key_file,
        # a VM's service listens on its own address (the emulator names one), else on all
        host=str(payload.get("host") or os.environ.get("AZMANAGERS_VM_ADDRESS") or "0.0.0.0"),
        port=int(payload.get("port", 0)),
        self_delete=str(payload.get("self_delete", "")),
        body_timeout_s=float(payload.get("body_timeout_s", ServiceConfig.body_timeout_s)),
    )


def _make_log_private() -> None:
    """Make the file the service logs to (a process-VM's ``boot.log``) readable by its
    owner only: it names every request's path."""
    for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
        with contextlib.suppress(OSError):
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                os.fchmod(fd, 0o600)


def main(payload_path: str) -> int:
    """Entry point of the detached role: serve until stopped."""
    from azmanagers.agent.worker import load_payload

    _make_log_private()
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    try:
        payload = load_payload(payload_path)
        config = config_from_payload(payload, Path(payload_path).resolve().parent / "detached")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        print(f"azmanagers detached: cannot read the boot payload: {exc}", flush=True)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
    return 0
