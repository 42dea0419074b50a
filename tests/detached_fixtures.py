"""A detached service as a real HTTPS server in its own process, for tests."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from azmanagers.detached.client import ServiceAddress, ServiceClient
from azmanagers.providers.boot import encode_payload
from azmanagers.tls import fingerprint, make_self_signed
from tests.conftest import processes_under

DEADLINE_S = 60.0


@dataclass
class Service:
    folder: Path
    payload: Path
    address: ServiceAddress
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port_file = self.folder / "detached" / "port"
        port_file.unlink(missing_ok=True)
        log = open(self.folder / "service.log", "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "azmanagers.agent", "detached", "--payload", str(self.payload)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "AZMANAGERS_INSTANCE_DIR": str(self.folder)},
        )
        log.close()
        deadline = time.monotonic() + DEADLINE_S
        while not port_file.exists() or not port_file.read_text():
            assert self.process.poll() is None, (self.folder / "service.log").read_text()
            assert time.monotonic() < deadline, "the detached service did not start"
            time.sleep(0.05)
        self.address = replace(self.address, port=int(port_file.read_text()))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)  # the service only: jobs live on
            self.process.wait(10)
        self.process = None

    def client(self) -> ServiceClient:
        return ServiceClient(self.address)

    def raw_socket(self, timeout_s: float = DEADLINE_S) -> ssl.SSLSocket:
        """A TLS connection to the service that trusts its certificate, for raw requests."""
        context = ssl.create_default_context(cadata=self.address.cert)
        context.check_hostname = False
        sock = socket.create_connection(("127.0.0.1", self.address.port), timeout=timeout_s)
        return context.wrap_socket(sock)

    def log(self) -> str:
        return (self.folder / "service.log").read_text(errors="replace")


def service_payload(name: str, **settings: Any) -> tuple[dict[str, Any], ServiceAddress]:
    """A service's boot payload on loopback (a fresh key pair, a token's hash, ``settings``)
    and the address a client pins (its port 0 until the service listens)."""
    pair = make_self_signed(f"detached {name}")
    token = secrets.token_urlsafe(32)
    payload = {
        "name": name,
        "host": "127.0.0.1",
        "port": 0,
        "tls": {"cert": pair.cert, "key": pair.key},
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        **settings,
    }
    return payload, ServiceAddress(name, "127.0.0.1", 0, pair.cert, fingerprint(pair.cert), token)


@contextmanager
def running_service(tmp_path: Path, **settings: Any) -> Iterator[Service]:
    """Start a detached service with its own key pair and token under ``tmp_path``.

    ``settings`` are added to its boot payload (e.g. ``body_timeout_s``).
    """
    payload, address = service_payload("test-vm", **settings)
    (tmp_path / "payload.json.gz").write_bytes(base64.b64decode(encode_payload(payload)))
    svc = Service(tmp_path, tmp_path / "payload.json.gz", address)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        leftovers = processes_under(tmp_path)
        for proc in leftovers:
            proc.kill()
        assert leftovers == [], "a job outlived its test"
