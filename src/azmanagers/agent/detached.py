"""The detached service: an HTTPS API on a VM that runs jobs independent of the caller.

Every request but the schema needs ``Authorization: Bearer <token>``; the VM keeps only the
token's SHA-256. The server certificate is the VM's own; clients pin its fingerprint. Each
job runs in its own process and directory (``azmanagers.agent.jobrun``); its record is in
SQLite (``jobstore``), so a restarted service keeps every job and adopts those still
running. Routes are listed in ``openapi.schema()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tornado.httpserver
import tornado.netutil
import tornado.web

from azmanagers import __version__
from azmanagers.agent import jobrun
from azmanagers.agent.detached_schema import schema
from azmanagers.agent.jobstore import FINISHED, JobRecord, JobStore

logger = logging.getLogger("azmanagers.detached")

MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""The largest request body (a job with its arguments and variable bundle)."""
MAX_READ_BYTES = 4 * 1024 * 1024
"""The most of a job's output one read returns."""
MAX_WAIT_S = 60.0
"""The longest one wait request blocks; clients wait longer by asking again."""
POLL_S = 0.1
KILL_GRACE_S = 5.0
DISCARD_FACTOR = 4
"""A too-large body up to this many times the limit is read and dropped before the 413."""
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
_PASSED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "PYTHONPATH",
    "AZMANAGERS_IMDS_ENDPOINT",
    "AZMANAGERS_INSTANCE_DIR",  # a process-VM's jobs are stopped with it
)
"""The service's variables a job sees (no others: the job gets a clean environment)."""


class BadRequest(tornado.web.HTTPError):
    """A 4xx answer with a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, reason=None)
        self.message = message


@dataclass
class ServiceConfig:
    """What the service needs: from the boot payload, or a test."""

    name: str
    state_dir: Path
    token_sha256: str = field(repr=False)
    cert_file: Path
    key_file: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_request_bytes: int = MAX_REQUEST_BYTES


@dataclass
class _Running:
    """A job whose process this service watches."""

    process: subprocess.Popen[bytes] | None  # None: adopted after a restart
    pid: int
    started_at: float


class JobService:
    """Starts jobs, watches their processes, and keeps their records."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.jobs_dir = config.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(config.state_dir / "jobs.db")
        self.running: dict[str, _Running] = {}
        self.started_at = time.time()
        self._recover()

    # -- starting ----------------------------------------------------------------------
    def submit(self, request: dict[str, Any]) -> JobRecord:
        """Check a run request, write its files, start its process; return its record."""
        code, call = request.get("code"), request.get("call")
        if (code is None) == (call is None):
            raise BadRequest(400, "give exactly one of 'code' (a string) or 'call' (base64)")
        if code is not None and not isinstance(code, str):
            raise BadRequest(400, "'code' must be a string of Python source")
        name = request.get("name", "")
        if not isinstance(name, str) or len(name) > 200:
            raise BadRequest(400, "'name' must be a string of at most 200 characters")
        env = request.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise BadRequest(400, "'env' must map variable names to string values")
        persist = request.get("persist", True)
        if not isinstance(persist, bool):
            raise BadRequest(400, "'persist' must be true or false")
        blobs = {"call": call, "bundle": request.get("bundle")}
        decoded: dict[str, bytes] = {}
        for key, value in blobs.items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise BadRequest(400, f"'{key}' must be a base64 string")
            try:
                decoded[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(400, f"'{key}' is not valid base64") from None
        job_id = secrets.token_hex(8)
        job_dir = self.jobs_dir / job_id
        (job_dir / "work").mkdir(parents=True, mode=0o700)
        if code is not None:
            (job_dir / jobrun.CODE_FILE).write_text(code)
        else:
            (job_dir / jobrun.CALL_FILE).write_bytes(decoded["call"])
        if "bundle" in decoded:
            (job_dir / "bundle.pkl").write_bytes(decoded["bundle"])
        record = JobRecord(
            id=job_id,
            name=name,
            kind="code" if code is not None else "call",
            status="queued",
            created_at=time.time(),
            persist=persist,
        )
        self.store.add(record)
        return self._start(record, env)

    def _start(self, record: JobRecord, env: dict[str, str]) -> JobRecord:
        job_dir = self.jobs_dir / record.id
        job_env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        job_env.update(env)
        job_env.update(
            PYTHONUNBUFFERED="1",
            AZMANAGERS_JOB_ID=record.id,
            AZMANAGERS_VM_NAME=self.config.name,
        )
        if (job_dir / "bundle.pkl").exists():
            job_env["AZMANAGERS_VARIABLE_BUNDLE"] = str(job_dir / "bundle.pkl")
        try:
            with (
                open(job_dir / "stdout", "wb") as out,
                open(job_dir / "stderr", "wb") as err,
            ):
                process = subprocess.Popen(
                    [sys.executable, "-m", "azmanagers.agent.jobrun", str(job_dir)],
                    cwd=job_dir / "work",
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=job_env,
                    start_new_session=True,  # survives a restart of the service; killed as a group
                )
        except OSError as exc:
            return self.store.finish(
                record.id, "failed", error_type="OSError", error_message=f"cannot start: {exc}"
            )
        started = _create_time(process.pid) or time.time()
        self.running[record.id] = _Running(process, process.pid, started)
        logger.info("job %s started (pid %d)", record.id, process.pid)
        return self.store.update(
            record.id,
            status="running",
            started_at=time.time(),
            pid=process.pid,
            pid_started_at=started,
        )

    # -- watching ----------------------------------------------------------------------
    def poll(self) -> None:
        """Finish the records of jobs whose process has ended."""
        for job_id, run in list(self.running.items()):
            if run.process is not None:
                code = run.process.poll()
                if code is None:
                    continue
            elif _alive(run.pid, run.started_at):
                continue
            else:
                code = None
            del self.running[job_id]
            self._finish_from_outcome(job_id, code)

    def _finish_from_outcome(self, job_id: str, exit_code: int | None) -> JobRecord:
        outcome_file = self.jobs_dir / job_id / jobrun.OUTCOME_FILE
        try:
            outcome = json.loads(outcome_file.read_text())
        except (OSError, ValueError):
            outcome = None
        if outcome is not None and outcome.get("status") == "succeeded":
            return self.store.finish(job_id, "succeeded", exit_code=exit_code)
        if outcome is not None:
            return self.store.finish(
                job_id,
                "failed",
                exit_code=exit_code,
                error_type=str(outcome.get("error_type", "")),
                error_message=str(outcome.get("error_message", "")),
            )
        reason = (
            f"its process exited with status {exit_code} before it finished"
            if exit_code is not None
            else "its process ended without recording an outcome"
        )
        return self.store.finish(
            job_id, "failed", exit_code=exit_code, error_type="JobDied", error_message=reason
        )

    def _recover(self) -> None:
        """After a restart: adopt jobs still running, settle those that ended meanwhile."""
        for record in self.store.all():
            if record.status in FINISHED:
                continue
            if record.pid and record.pid_started_at and _alive(record.pid, record.pid_started_at):
                self.running[record.id] = _Running(None, record.pid, record.pid_started_at)
                logger.info("job %s still running (pid %d): adopted", record.id, record.pid)
                continue
            outcome = self.jobs_dir / record.id / jobrun.OUTCOME_FILE
            if outcome.exists():
                self._finish_from_outcome(record.id, None)
            else:
                self.store.finish(
                    record.id,
                    "failed",
                    error_type="JobDied",
                    error_message="its process died while the detached service was down",
                )

    # -- acting on jobs ----------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord:
        """Return a job's record, or raise a 404."""
        found = self.store.get(job_id) if JOB_ID.match(job_id) else None
        if found is None:
            raise BadRequest(404, f"no job {job_id!r} on this VM")
        return found

    def kill(self, job_id: str) -> JobRecord:
        """Stop a job's process group (TERM, then KILL after a grace period)."""
        record = self.record(job_id)
        if record.status in FINISHED:
            return record
        run = self.running.pop(job_id, None)
        killed = self.store.finish(job_id, "killed", error_message="killed on request")
        if run is not None:
            _kill_group(run)
        return killed

    def read(self, job_id: str, stream: str, offset: int, limit: int) -> tuple[bytes, int]:
        """Return up to ``limit`` bytes of a job's stdout or stderr from ``offset``, and the
        stream's size so far."""
        self.record(job_id)
        path = self.jobs_dir / job_id / stream
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(min(offset, size))
                return handle.read(min(limit, MAX_READ_BYTES)), size
        except FileNotFoundError:
            return b"", 0

    def result(self, job_id: str) -> dict[str, Any]:
        """Return a finished job's outcome: its pickled value, or its error with traceback."""
        record = self.record(job_id)
        if record.status not in FINISHED:
            raise BadRequest(409, f"job {job_id} is {record.status}: wait for it first")
        job_dir = self.jobs_dir / job_id
        out: dict[str, Any] = {"job": record.public(), "result": None, "error": None}
        if record.status == "succeeded" and (job_dir / jobrun.RESULT_FILE).exists():
            out["result"] = base64.b64encode((job_dir / jobrun.RESULT_FILE).read_bytes()).decode()
        elif record.status != "succeeded":
            try:
                outcome = json.loads((job_dir / jobrun.OUTCOME_FILE).read_text())
            except (OSError, ValueError):
                outcome = {}
            out["error"] = {
                "type": record.error_type or "",
                "message": record.error_message or "",
                "traceback": str(outcome.get("traceback", "")),
            }
        return out

    def close(self) -> None:
        """Stop watching (job processes keep running) and close the store."""
        self.store.close()


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int, started_at: float) -> bool:
    """Whether ``pid`` is still the process that started at ``started_at``."""
    created = _create_time(pid)
    if created is None or abs(created - started_at) > 1.0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _kill_group(run: _Running) -> None:
    if not _alive(run.pid, run.started_at):
        return
    try:
        os.killpg(run.pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if run.process is not None and run.process.poll() is not None:
            return
        if run.process is None and not _alive(run.pid, run.started_at):
            return
        time.sleep(POLL_S)
    with contextlib.suppress(OSError):
        os.killpg(run.pid, signal.SIGKILL)
    if run.process is not None:
        run.process.wait(KILL_GRACE_S)


# -- HTTP ------------------------------------------------------------------------------
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

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, BadRequest):
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
        while record.status not in FINISHED and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            record = self.service.record(job_id)
        self.send_json(record.public())


class _Kill(_Handler):
    async def post(self, job_id: str) -> None:
        record = await asyncio.to_thread(self.service.kill, job_id)
        self.send_json(record.public())


class _Result(_Handler):
    def get(self, job_id: str) -> None:
        self.send_json(self.service.result(job_id))


def make_app(service: JobService) -> tornado.web.Application:
    """The service's routes over ``service``."""
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
    )


class _NotFound(_Handler):
    def prepare(self) -> None:
        super().prepare()
        raise BadRequest(404, f"no route {self.request.method} {self.request.path}")


async def serve(config: ServiceConfig, ready: asyncio.Future[int] | None = None) -> None:
    """Run the service until cancelled; ``ready`` gets the port once it listens."""
    service = JobService(config)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.cert_file), str(config.key_file))
    server = tornado.httpserver.HTTPServer(
        make_app(service),
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
            service.poll()
            await asyncio.sleep(POLL_S)
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
        host=str(payload.get("host") or "0.0.0.0"),
        port=int(payload.get("port", 0)),
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
