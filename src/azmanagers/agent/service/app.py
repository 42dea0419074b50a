"""The detached service: an HTTPS API on a VM that runs jobs independent of the caller.

Every request but the schema needs ``Authorization: Bearer <token>``; the VM keeps only the
token's SHA-256. The server certificate is the VM's own; clients pin its fingerprint. Each
job runs in its own process and directory (``azmanagers.agent.service.run``); its record is in
SQLite (``jobstore``), so a restarted service keeps every job and adopts those still
running (``jobservice``). Routes are listed in ``detached_schema.schema()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from azmanagers._version import __version__
from azmanagers.agent.service.jobs import (
    MAX_READ_BYTES,
    BadRequest,
    JobService,
    ServiceConfig,
)
from azmanagers.agent.service.schema import schema
from azmanagers.agent.service.store import FINISHED

logger = logging.getLogger("azmanagers.detached")

MAX_WAIT_S = 60.0
"""The longest one wait request blocks; clients wait longer by asking again."""
ADOPTED_POLL_S = 0.5
"""How often the service looks at jobs it adopted after a restart (not its children)."""
DISCARD_FACTOR = 4
"""A too-large body up to this many times the limit is read and dropped before the 413."""


class _Handler(tornado.web.RequestHandler):
    """Checks the bearer token; answers errors as JSON ``{"error": message}``."""

    authenticated = True

    def initialize(self, service: JobService) -> None:
        self.service = service

    def prepare(self) -> None:
        if not self.authenticated:
            return
        header = self.request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            digest, self.service.config.token_sha256
        ):
            self.set_header("WWW-Authenticate", 'Bearer realm="azmanagers-detached"')
            raise BadRequest(401, "a valid bearer token is required")

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, BadRequest):  # a refused request is not a service error
            super().log_exception(typ, value, tb)

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


class _Schema(_Handler):
    authenticated = False

    def get(self) -> None:
        self.send_json(schema())


class _Ping(_Handler):
    def get(self) -> None:
        self.send_json({"ok": True, "name": self.service.config.name})


class _VMInfo(_Handler):
    def get(self) -> None:
        self.send_json(
            {
                "name": self.service.config.name,
                "azmanagers": __version__,
                "python": sys.version.split()[0],
                "cpus": os.cpu_count() or 1,
                "started_at": self.service.started_at,
                "running_jobs": len(self.service.running),
            }
        )


@tornado.web.stream_request_body
class _Jobs(_Handler):
    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        limit = self.service.config.max_request_bytes
        declared = self.request.headers.get("Content-Length", "")
        length = int(declared) if declared.isdigit() else 0
        if length > DISCARD_FACTOR * limit:
            raise BadRequest(413, f"the request is larger than {limit} bytes")
        # A body up to a few times the limit is read (and dropped) so that the client,
        # still sending, gets the 413 rather than a reset connection.
        self.request.connection.set_max_body_size(max(length, limit))  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.service.config.max_request_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    def get(self) -> None:
        self.send_json({"jobs": [r.public() for r in self.service.store.all()]})

    def post(self) -> None:
        if self._size > self.service.config.max_request_bytes:
            limit = self.service.config.max_request_bytes
            raise BadRequest(
                413,
                f"the request is larger than {limit} bytes: ship big inputs as files "
                "(Blob storage, or a path on the VM), not as arguments",
            )
        try:
            request = json.loads(b"".join(self._chunks) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(400, "the body must be a JSON object") from None
        if not isinstance(request, dict):
            raise BadRequest(400, "the body must be a JSON object")
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
        self.set_header("X-Azm-Size", str(size))
        self.set_header("X-Azm-Next-Offset", str(min(offset, size) + len(data)))
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
        self.send_json(self.service.result(job_id))


def make_app(
    service: JobService, changed: asyncio.Condition | None = None
) -> tornado.web.Application:
    """The service's routes over ``service``; ``changed`` is notified when jobs finish."""
    args = {"service": service}
    job = r"/v1/jobs/([^/]+)"
    return tornado.web.Application(
        [
            (r"/v1/openapi.json", _Schema, args),
            (r"/v1/ping", _Ping, args),
            (r"/v1/vm", _VMInfo, args),
            (r"/v1/jobs", _Jobs, args),
            (job, _Job, args),
            (job + r"/(stdout|stderr)", _Output, args),
            (job + r"/wait", _Wait, args),
            (job + r"/kill", _Kill, args),
            (job + r"/result", _Result, args),
        ],
        default_handler_class=_NotFound,
        default_handler_args=args,
        changed=changed or asyncio.Condition(),
    )


class _NotFound(_Handler):
    def prepare(self) -> None:
        super().prepare()
        raise BadRequest(404, f"no route {self.request.method} {self.request.path}")


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
        max_body_size=config.max_request_bytes,
        idle_connection_timeout=120,
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
    )


def main(payload_path: str) -> int:
    """Entry point of the detached role: serve until stopped."""
    from azmanagers.agent.worker import load_payload

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
