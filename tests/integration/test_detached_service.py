"""The detached service as a real HTTPS server in its own process, through our client."""

from __future__ import annotations

import base64
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cloudpickle
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
