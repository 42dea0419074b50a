"""The detached service's process: listen (TLS, gated), run jobs, serve until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tornado.netutil

from azmanagers.agent.service.gate import ConnectionGate, GatedHTTPServer
from azmanagers.agent.service.jobs import JobService, ServiceConfig
from azmanagers.agent.service.routes import Handler, make_app
from azmanagers.detached.wire import Route

logger = logging.getLogger("azmanagers.detached")

ADOPTED_POLL_S = 0.5
"""How often the service looks at jobs it adopted after a restart (not its children)."""
MAX_HEADER_BYTES = 64 * 1024
IDLE_S = 120.0
"""An authenticated connection idle this long is closed; also the longest its later
requests' headers may take (a new connection has ``gate.FIRST_REQUEST_S``)."""


async def serve(
    config: ServiceConfig,
    ready: asyncio.Future[int] | None = None,
    *,
    extra_routes: Sequence[tuple[Route, type[Handler]]] = (),
    settings: Mapping[str, Any] | None = None,
    service: JobService | None = None,
) -> None:
    """Run the service until cancelled; ``ready`` gets the port once it listens.

    ``extra_routes`` and ``settings`` go to ``make_app`` (a role's own routes, e.g. a head's);
    ``service`` is the job service to serve (default: a new one for ``config``).
    """
    service = service if service is not None else JobService(config)
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(exited.set)

    service.on_exit = wake
    changed = asyncio.Condition()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(config.cert_file), str(config.key_file))
    gate = ConnectionGate(config.max_connections, config.first_request_timeout_s)
    server = GatedHTTPServer(
        make_app(service, changed, gate, extra_routes=extra_routes, settings=settings),
        ssl_options=context,
        max_body_size=config.max_request_bytes,  # each request sets its own (prepare)
        max_header_size=MAX_HEADER_BYTES,
        idle_connection_timeout=IDLE_S,  # an authenticated connection's; a new one: the gate's
        body_timeout=config.body_timeout_s,
    )
    server.gate = gate
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
        max_connections=int(payload.get("max_connections", ServiceConfig.max_connections)),
        first_request_timeout_s=float(
            payload.get("first_request_timeout_s", ServiceConfig.first_request_timeout_s)
        ),
    )


def make_log_private() -> None:
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

    make_log_private()
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
