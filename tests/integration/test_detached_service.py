"""The detached service as a real HTTPS server in its own process, through our client."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cloudpickle
import psutil
import pytest

from azmanagers.detached.client import ServiceClient
from azmanagers.errors import DetachedServiceError, JobNotFoundError
from azmanagers.tls import make_self_signed
from tests.detached_fixtures import DEADLINE_S, Service, running_service

pytestmark = pytest.mark.integration


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with running_service(tmp_path) as svc:
        yield svc


def run_call(client: ServiceClient, fn: object, *args: object, **kwargs: object) -> dict:  # type: ignore[type-arg]
    call = base64.b64encode(cloudpickle.dumps((fn, args, kwargs))).decode()
    return client.request("POST", "/v1/jobs", body={"call": call, "name": "t"})  # type: ignore[no-any-return]


def wait(client: ServiceClient, job_id: str, timeout: float = DEADLINE_S) -> dict:  # type: ignore[type-arg]
    return client.request(  # type: ignore[no-any-return]
        "POST", f"/v1/jobs/{job_id}/wait", query={"timeout": timeout}, timeout_s=timeout + 30
    )


def test_a_function_runs_in_its_own_process_and_returns_its_value(service: Service) -> None:
    client = service.client()
    job = run_call(client, lambda a, b=1: (a + b, os.getpid(), os.getcwd()), 2, b=3)
    assert job["status"] in ("queued", "running")
    assert wait(client, job["id"])["status"] == "succeeded"
    reply = client.request("GET", f"/v1/jobs/{job['id']}/result")
    value, pid, cwd = cloudpickle.loads(base64.b64decode(reply["result"]))
    assert value == 5
    assert pid != service.process.pid  # type: ignore[union-attr]
    assert cwd == str(service.folder / "detached" / "jobs" / job["id"] / "work")


def test_code_that_raises_fails_with_its_traceback_and_the_service_stays_up(
    service: Service,
) -> None:
    client = service.client()
    job = client.request(
        "POST", "/v1/jobs", body={"code": "print('before')\nraise KeyError('missing')\n"}
    )
    done = wait(client, job["id"])
    assert done["status"] == "failed"
    assert done["error_type"] == "builtins.KeyError"
    reply = client.request("GET", f"/v1/jobs/{job['id']}/result")
    assert "raise KeyError('missing')" in reply["error"]["traceback"]
    out, _ = client.request("GET", f"/v1/jobs/{job['id']}/stdout", raw=True)
    assert out == b"before\n"
    assert client.request("GET", "/v1/ping")["ok"] is True


def test_output_can_be_tailed_while_the_job_runs_and_it_can_be_killed(service: Service) -> None:
    client = service.client()
    code = "import time\nfor i in range(1000):\n    print('line', i)\n    time.sleep(0.05)\n"
    job = client.request("POST", "/v1/jobs", body={"code": code, "env": {"A": "1"}})
    offset, seen = 0, b""
    deadline = time.monotonic() + DEADLINE_S
    while seen.count(b"\n") < 5:
        assert time.monotonic() < deadline, seen
        data, headers = client.request(
            "GET", f"/v1/jobs/{job['id']}/stdout", query={"offset": offset}, raw=True
        )
        seen += data
        offset = int(headers["x-azm-next-offset"])
        time.sleep(0.05)
    assert seen.startswith(b"line 0\nline 1\n")
    assert client.request("GET", f"/v1/jobs/{job['id']}")["status"] == "running"
    killed = client.request("POST", f"/v1/jobs/{job['id']}/kill")
    assert killed["status"] == "killed"
    pid = killed["pid"]
    deadline = time.monotonic() + DEADLINE_S
    while os.path.exists(f"/proc/{pid}") and "Z" not in _state(pid):
        assert time.monotonic() < deadline, "the killed job's process lives on"
        time.sleep(0.05)
    assert wait(client, job["id"])["status"] == "killed"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_restart_keeps_every_job_and_adopts_a_running_one(service: Service) -> None:
    client = service.client()
    quick = client.request("POST", "/v1/jobs", body={"code": "print('quick')"})
    assert wait(client, quick["id"])["status"] == "succeeded"
    slow = client.request(
        "POST", "/v1/jobs", body={"code": "import time\ntime.sleep(3)\nprint('slow done')\n"}
    )
    doomed = client.request("POST", "/v1/jobs", body={"code": "import time\ntime.sleep(60)\n"})
    service.stop()
    os.killpg(doomed["pid"], signal.SIGKILL)  # dies while the service is down
    service.start()
    client = service.client()
    jobs = {j["id"]: j for j in client.request("GET", "/v1/jobs")["jobs"]}
    assert jobs[quick["id"]]["status"] == "succeeded"
    assert jobs[doomed["id"]]["status"] == "failed"
    assert "while the detached service was down" in jobs[doomed["id"]]["error_message"]
    assert jobs[slow["id"]]["status"] == "running"
    assert wait(client, slow["id"])["status"] == "succeeded"
    out, _ = client.request("GET", f"/v1/jobs/{slow['id']}/stdout", raw=True)
    assert out == b"slow done\n"


def test_bad_requests_get_4xx_with_a_message(service: Service) -> None:
    client = service.client()
    wrong = ServiceClient(replace(service.address, token="not-the-token"))
    with pytest.raises(DetachedServiceError, match="401: a valid bearer token is required"):
        wrong.request("GET", "/v1/jobs")
    with pytest.raises(JobNotFoundError, match="no job"):
        client.request("GET", "/v1/jobs/0123456789abcdef")
    with pytest.raises(JobNotFoundError, match=r"no route|no job"):
        client.request("GET", "/v1/jobs/../etc/stdout")
    with pytest.raises(JobNotFoundError, match="no job"):
        client.request("GET", "/v1/jobs/..%2F..%2Fjobs.db/stdout")
    for body, message in [
        ({}, "exactly one of 'code'"),
        ({"code": "1", "call": "AA=="}, "exactly one of 'code'"),
        ({"call": "%%%"}, "not valid base64"),
        ({"code": 3}, "'code' must be a string"),
        ({"code": "1", "env": {"A": 1}}, "'env' must map"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(DetachedServiceError, match=f"400: .*{message}"):
            client.request("POST", "/v1/jobs", body=body)
    with pytest.raises(DetachedServiceError, match="413"):
        client.request("POST", "/v1/jobs", body={"code": "#" * (65 * 1024 * 1024)})
    other = make_self_signed("impostor")
    impostor = replace(service.address, cert=other.cert)  # right token, wrong certificate
    with pytest.raises(DetachedServiceError, match="pinned certificate"):
        ServiceClient(impostor).request("GET", "/v1/ping")
    assert client.request("GET", "/v1/ping")["ok"] is True


# -- defect 2: nothing of a body is read before the token is checked; bodies are bounded ----


def _raw_request(sock: ssl.SSLSocket, head: str) -> None:
    sock.sendall(head.replace("\n", "\r\n").encode())


def _reply_head(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("route", ["GET /v1/ping", "POST /v1/jobs", "GET /v1/jobs/x/stdout"])
def test_an_unauthenticated_huge_body_gets_401_before_it_is_read(
    service: Service, route: str
) -> None:
    body_bytes = 60 * 1024 * 1024
    server = psutil.Process(service.process.pid)  # type: ignore[union-attr]
    before = server.memory_info().rss
    chunk = b"x" * (1024 * 1024)
    for _ in range(3):
        with service.raw_socket(timeout_s=5.0) as sock:
            _raw_request(
                sock,
                f"{route} HTTP/1.1\nHost: vm\nAuthorization: Bearer wrong\n"
                f"Content-Length: {body_bytes}\n\n",
            )
            try:
                head = _reply_head(sock)  # no byte of the body sent yet
            except TimeoutError:
                head = b""
            sent = 0
            with contextlib.suppress(OSError):  # the service may close on us: that is fine
                while sent < body_bytes:
                    sock.sendall(chunk)
                    sent += len(chunk)
            assert head.startswith(b"HTTP/1.1 401"), (route, head[:200])
    grown = server.memory_info().rss - before
    assert grown < 20 * 1024 * 1024, f"the service grew by {grown / 2**20:.0f} MiB"
    assert service.client().request("GET", "/v1/ping")["ok"] is True


def test_a_declared_body_that_never_comes_is_closed_within_the_bound(tmp_path: Path) -> None:
    with running_service(tmp_path, body_timeout_s=2.0) as svc:
        with svc.raw_socket(timeout_s=30.0) as sock:
            _raw_request(
                sock,
                f"POST /v1/jobs HTTP/1.1\nHost: vm\nAuthorization: Bearer {svc.address.token}\n"
                "Content-Type: application/json\nContent-Length: 100\n\n",
            )
            started = time.monotonic()
            try:
                data = sock.recv(4096)
            except TimeoutError:
                data = b"(still open)"
            except OSError:
                data = b""
            waited = time.monotonic() - started
        assert data == b"" and waited < 10.0, (data[:100], waited)
        with svc.raw_socket(timeout_s=30.0) as sock:  # far too large: 413 before reading it
            _raw_request(
                sock,
                f"POST /v1/jobs HTTP/1.1\nHost: vm\nAuthorization: Bearer {svc.address.token}\n"
                f"Content-Type: application/json\nContent-Length: {300 * 1024 * 1024}\n\n",
            )
            head = _reply_head(sock)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]


# -- defect 3: lone surrogates are refused whole; no half-made job --------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{"code": "print(1)  # \\ud800"}',
        '{"code": "print(1)", "name": "job \\udfff"}',
        '{"code": "print(1)", "env": {"K\\ud800": "v"}}',
        '{"code": "print(1)", "env": {"K": "\\ud800"}}',
    ],
)
def test_lone_surrogates_get_400_and_leave_no_job(service: Service, body: str) -> None:
    with service.raw_socket() as sock:
        data = body.encode()
        _raw_request(
            sock,
            f"POST /v1/jobs HTTP/1.1\nHost: vm\nAuthorization: Bearer {service.address.token}\n"
            f"Content-Type: application/json\nContent-Length: {len(data)}\nConnection: close\n\n",
        )
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    assert b"surrogate" in reply
    client = service.client()
    # through our own client too (json.dumps sends the escape as it is)
    with pytest.raises(DetachedServiceError, match=r"400: .*surrogate"):
        client.request("POST", "/v1/jobs", body=json.loads(body))
    assert client.request("GET", "/v1/jobs")["jobs"] == []
    assert list((service.folder / "detached" / "jobs").iterdir()) == []
    service.stop()
    service.start()  # a restart finds nothing half-made either
    assert service.client().request("GET", "/v1/jobs")["jobs"] == []


# -- defect 9: a kill reaches a job's processes in their own session; no query in logs ------


def test_killing_a_job_kills_its_children_in_their_own_session(service: Service) -> None:
    client = service.client()
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['setsid', 'sleep', '1000'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(1000)\n"
    )
    job = client.request("POST", "/v1/jobs", body={"code": code})
    deadline = time.monotonic() + DEADLINE_S
    out = b""
    while not out.strip():
        assert time.monotonic() < deadline, "the job did not start its child"
        out, _ = client.request("GET", f"/v1/jobs/{job['id']}/stdout", raw=True)
        time.sleep(0.05)
    child = int(out.split()[0])
    assert os.getsid(child) == child  # its own session: a group kill misses it
    assert client.request("POST", f"/v1/jobs/{job['id']}/kill")["status"] == "killed"
    deadline = time.monotonic() + DEADLINE_S
    while os.path.exists(f"/proc/{child}") and "Z" not in _state(child):
        assert time.monotonic() < deadline, "the job's setsid child outlived the kill"
        time.sleep(0.05)


def test_the_service_logs_paths_without_their_query_string(service: Service) -> None:
    client = service.client()
    client.request("GET", "/v1/ping", query={"token": "s3cret-in-a-query"})
    with pytest.raises(JobNotFoundError):
        client.request("GET", "/v1/jobs/0123456789abcdef", query={"token": "s3cret-too"})
    deadline = time.monotonic() + DEADLINE_S
    while "/v1/jobs/0123456789abcdef" not in service.log():
        assert time.monotonic() < deadline, service.log()
        time.sleep(0.05)
    assert "s3cret" not in service.log()
    assert "GET /v1/ping" in service.log()
