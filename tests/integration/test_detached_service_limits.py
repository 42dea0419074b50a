"""The detached service at its limits: odd bodies, reserved variables, leftover daemons,
methods before tokens, and floods of connections that never authenticate."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.detached_fixtures import DEADLINE_S, Service, running_service

pytestmark = pytest.mark.integration


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with running_service(tmp_path) as svc:
        yield svc


def _exchange(service: Service, head: str, body: bytes = b"", token: str | None = "") -> bytes:
    """Send one raw request (``token=None``: none; '' the service's) and read the whole reply."""
    auth = "" if token is None else f"Authorization: Bearer {token or service.address.token}\n"
    text = f"{head} HTTP/1.1\nHost: vm\n{auth}Content-Length: {len(body)}\nConnection: close\n\n"
    with service.raw_socket() as sock:
        sock.sendall(text.replace("\n", "\r\n").encode() + body)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
    return reply


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 100000 + b"]" * 100000, b"nested too deeply"),
        (b'{"code": "1", "env": ' + b'{"a": ' * 50000 + b'"x"' + b"}" * 50001, b"nested"),
        (b'{"code": "1", "persist": ' + b"9" * 5000 + b"}", b"5000 digits"),
        (b'{"code": "\xff\xfe"}', b"not UTF-8"),
        (b'{"code": "1", "env": []}', b"'env' must be a JSON object"),
        (b'{"code": "1", "env": 0}', b"'env' must be a JSON object"),
        (b'{"code": "1", "env": false}', b"'env' must be a JSON object"),
        (b'{"code": "1", "name": "a\\u0000b"}', b"'name' must not hold a NUL"),
        (b'{"code": "1", "env": {"AZMANAGERS_INSTANCE_DIR": "/tmp"}}', b"AZMANAGERS_"),
        (b'{"code": "1", "env": {"AZMANAGERS_JOB_ID": "0000000000000000"}}', b"AZMANAGERS_"),
    ],
    ids=[
        "deep-list",
        "deep-env",
        "huge-int",
        "not-utf8",
        "env-list",
        "env-zero",
        "env-false",
        "nul-name",
        "env-instance-dir",
        "env-job-id",
    ],
)
def test_a_bad_body_gets_a_400_that_says_what_is_wrong(
    service: Service, body: bytes, message: bytes
) -> None:
    reply = _exchange(service, "POST /v1/jobs", body)
    assert _status(reply) == 400 and message in reply, reply[:400]
    assert service.client().request("GET", "/v1/jobs")["jobs"] == []
    assert b"Traceback" not in service.log().encode()


def test_methods_and_the_schema_route_ask_for_the_token_first(service: Service) -> None:
    for head in ("POST /v1/openapi.json", "FOO /v1/ping", "PUT /v1/ping", "DELETE /v1/jobs"):
        assert _status(_exchange(service, head, token=None)) == 401, head
        assert _status(_exchange(service, head, token="wrong")) == 401, head
        assert _status(_exchange(service, head)) == 405, head
    assert _status(_exchange(service, "GET /v1/openapi.json", token=None)) == 200


def test_a_finished_jobs_daemon_is_still_killed(service: Service) -> None:
    client = service.client()
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('daemon.pid', 'w').write(str(os.getpid()))\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "print('daemon started; the job ends')\n"
    )
    job = client.request("POST", "/v1/jobs", body={"code": code})
    done = client.request("POST", f"/v1/jobs/{job['id']}/wait", query={"timeout": DEADLINE_S})
    assert done["status"] == "succeeded"
    pid_file = service.folder / "detached" / "jobs" / job["id"] / "work" / "daemon.pid"
    deadline = time.monotonic() + DEADLINE_S
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    daemon = psutil.Process(int(pid_file.read_text()))
    assert daemon.is_running()
    killed = client.request("POST", f"/v1/jobs/{job['id']}/kill")
    assert killed["status"] == "succeeded"  # what it was: its own process had succeeded
    with contextlib.suppress(psutil.NoSuchProcess):
        daemon.wait(DEADLINE_S)
    assert not daemon.is_running() or daemon.status() == psutil.STATUS_ZOMBIE


def _fds(service: Service) -> int:
    return psutil.Process(service.process.pid).num_fds()  # type: ignore[union-attr]


def test_connections_that_never_authenticate_are_capped_and_closed_soon(
    tmp_path: Path,
) -> None:
    cap, first_request_s = 8, 2.0
    with running_service(
        tmp_path, max_connections=cap, first_request_timeout_s=first_request_s
    ) as svc:
        client = svc.client()
        assert client.request("GET", "/v1/ping")["ok"] is True  # kept alive: authenticated
        before = _fds(svc)
        flood = [socket.create_connection(("127.0.0.1", svc.address.port)) for _ in range(60)]
        try:
            time.sleep(1.0)
            assert _fds(svc) <= before + cap, (before, _fds(svc))
            other = svc.client()  # a new client gets in during the flood
            assert other.request("GET", "/v1/ping")["ok"] is True
            assert client.request("GET", "/v1/vm")["name"] == "test-vm"
        finally:
            for sock in flood:
                sock.close()
        with svc.raw_socket(timeout_s=30.0) as idle:  # TLS done, no request: closed soon
            started = time.monotonic()
            with contextlib.suppress(OSError):
                assert idle.recv(100) == b""
            assert time.monotonic() - started < first_request_s + 3.0
        with svc.raw_socket(timeout_s=30.0) as kept:  # an authenticated connection stays open
            auth = f"Authorization: Bearer {svc.address.token}"
            head = f"GET /v1/ping HTTP/1.1\r\nHost: vm\r\n{auth}\r\n\r\n"
            for _ in range(2):
                kept.sendall(head.encode())
                assert kept.recv(4096).startswith(b"HTTP/1.1 200")
                time.sleep(first_request_s + 1.0)
        assert client.request("GET", "/v1/ping")["ok"] is True
        assert os.path.exists(svc.folder / "detached" / "port")
