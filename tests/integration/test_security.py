"""TLS between scheduler and workers is enforced; workers get only their cluster's credentials."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import time
from pathlib import Path

import distributed
import pytest

import azmanagers
from azmanagers.providers.boot import decode_payload
from azmanagers.tls import KeyPair, make_cluster_credentials
from tests.conftest import processes_under

pytestmark = pytest.mark.integration


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    return host, int(port)


def _tls_refusal(host: str, port: int, ca: str, client: KeyPair | None, folder: Path) -> str:
    """Connect with TLS; return the SSL error the refusal raises (a timeout or data fails)."""
    ctx = ssl.create_default_context(cadata=ca)
    ctx.check_hostname = False
    if client is not None:
        (folder / "c.pem").write_text(client.cert)
        (folder / "k.pem").write_text(client.key)
        ctx.load_cert_chain(folder / "c.pem", folder / "k.pem")
    with socket.create_connection((host, port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"x" * 16)
                data = tls.recv(16)  # TLS 1.3: the server's verdict arrives after the handshake
        except ssl.SSLError as exc:
            return str(exc)
    raise AssertionError(f"the scheduler accepted the connection and answered {data!r}")


def _wait_for_log(caplog: pytest.LogCaptureFixture, reason: str) -> None:
    deadline = time.monotonic() + 10
    while reason not in caplog.text:
        assert time.monotonic() < deadline, f"the scheduler did not log {reason}: {caplog.text}"
        time.sleep(0.05)


def test_plain_tcp_and_certless_tls_are_refused_mutual_tls_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    assert cluster.scheduler_address.startswith("tls://")
    host, port = _host_port(cluster.scheduler_address)

    # 1. A plain-TCP Dask client cannot talk to the scheduler.
    with pytest.raises((OSError, TimeoutError)):
        distributed.Client(f"tcp://{host}:{port}", timeout=3, set_as_default=False)

    # 2. Raw plaintext bytes get no answer: the server closes the connection.
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"\x00" * 64 + b"GET / HTTP/1.0\r\n\r\n")
        try:
            reply = sock.recv(1024)
        except (ConnectionResetError, TimeoutError):
            reply = b""
        assert not reply.startswith(b"HTTP") and b"dask" not in reply.lower()

    # 3. TLS that trusts the CA but presents no client certificate: the scheduler refuses.
    with caplog.at_level(logging.WARNING, logger="distributed.comm.tcp"):
        _tls_refusal(host, port, cluster.credentials.ca, None, tmp_path)
        _wait_for_log(caplog, "PEER_DID_NOT_RETURN_A_CERTIFICATE")

        # 4. A client certificate from ANOTHER cluster's CA (trusting this one's) is refused.
        other = make_cluster_credentials("other").client
        _tls_refusal(host, port, cluster.credentials.ca, other, tmp_path)
        _wait_for_log(caplog, "CERTIFICATE_VERIFY_FAILED")

    # 5. The cluster's own client credentials work (positive control).
    with distributed.Client(
        cluster.scheduler_address, security=cluster.security, set_as_default=False
    ) as client:
        assert client.submit(pow, 3, 3).result(timeout=30) == 27


def test_boot_payload_carries_only_the_cluster_credentials(azm_home: Path) -> None:
    os.environ["AZURE_CLIENT_SECRET"] = "caller-secret-never-shipped"
    try:
        cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
        pool_dir = azm_home / "state" / "local" / "pools" / cluster.pool
        script = (pool_dir / "custom_data.sh").read_text()
        assert oct((pool_dir / "custom_data.sh").stat().st_mode & 0o777) == "0o600"
        assert "caller-secret" not in script
        instance = processes_under(azm_home)[0]
        assert "AZURE_CLIENT_SECRET" not in instance.environ()
        payload_file = Path(instance.environ()["AZMANAGERS_INSTANCE_DIR"]) / "payload.json.gz"
        assert oct(payload_file.stat().st_mode & 0o777) == "0o600"
        payload = decode_payload(payload_file.read_bytes())
        assert set(payload["tls"]) == {"ca", "cert", "key"}  # type: ignore[arg-type]
        assert payload["tls"]["key"] == cluster.credentials.worker.key  # type: ignore[index]
        text = json.dumps(payload)
        assert cluster.credentials.scheduler.key not in text
        assert cluster.credentials.client.key not in text
        assert "caller-secret" not in text
    finally:
        del os.environ["AZURE_CLIENT_SECRET"]


def _worker_security(cluster: azmanagers.AzCluster, folder: Path) -> distributed.Security:
    """A Security holding what a worker VM holds: the CA and the worker key pair."""
    creds = cluster.credentials
    (folder / "ca.pem").write_text(creds.ca)
    (folder / "w.pem").write_text(creds.worker.cert)
    (folder / "w.key").write_text(creds.worker.key)
    return distributed.Security(
        tls_ca_file=str(folder / "ca.pem"),
        tls_client_cert=str(folder / "w.pem"),
        tls_client_key=str(folder / "w.key"),
        require_encryption=True,
    )


def _scheduler_pid() -> int:
    return os.getpid()


def test_a_worker_certificate_cannot_act_as_a_client_or_run_code_on_the_scheduler(
    tmp_path: Path,
) -> None:
    import asyncio

    import cloudpickle
    from distributed.core import rpc

    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    security = _worker_security(cluster, tmp_path)
    with pytest.raises(Exception, match="refused 'register-client' from a worker's certificate"):
        distributed.Client(cluster.scheduler_address, security=security, timeout=20)

    async def as_worker(op: str, **kwargs: object) -> object:
        comm = rpc(
            cluster.scheduler_address, connection_args=security.get_connection_args("client")
        )
        try:
            return await getattr(comm, op)(**kwargs)
        finally:
            await comm.close_rpc()

    ran = tmp_path / "ran-on-scheduler"
    attack = cloudpickle.dumps(lambda: ran.write_text("pwned"))
    for op, kwargs in [
        ("run_function", {"function": attack}),
        ("register_scheduler_plugin", {"plugin": attack, "name": "x", "idempotent": False}),
        ("connection_stream", {}),
    ]:
        with pytest.raises(Exception, match=f"refused '{op}'"):
            asyncio.run(as_worker(op, **kwargs))
    assert not ran.exists()
    # the worker protocol still works for that certificate, and the caller keeps all of it
    assert asyncio.run(as_worker("identity"))["type"] == "Scheduler"  # type: ignore[index]
    client = distributed.default_client()
    assert client.run_on_scheduler(_scheduler_pid) == os.getpid()
    assert client.submit(sum, [1, 2, 3]).result() == 6


def test_tasks_cannot_submit_tasks_unless_the_cluster_allows_it() -> None:
    def _submit_from_a_task() -> int:  # defined here: pickled by value for the workers
        with distributed.worker_client() as inner:
            return int(inner.submit(abs, -5).result())

    azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    client = distributed.default_client()
    with pytest.raises(Exception, match="workers_can_submit=True"):
        client.submit(_submit_from_a_task, pure=False).result(timeout=60)
    azmanagers.rmprocs()
    azmanagers.addprocs("local", 1, waitfor=True, timeout=60, workers_can_submit=True)
    client = distributed.default_client()
    assert client.submit(_submit_from_a_task, pure=False).result(timeout=60) == 5


async def _request_from(source_ip: str, address: str, security: distributed.Security, msg: dict):  # type: ignore[type-arg]
    """Send one request to the scheduler over a worker-certificate TLS comm from ``source_ip``."""
    from distributed.comm.tcp import TLS
    from tornado.tcpclient import TCPClient

    host, port = _host_port(address)
    context = security.get_connection_args("client")["ssl_context"]
    stream = await TCPClient().connect(host, port, ssl_options=context, source_ip=source_ip)
    local = f"tls://{source_ip}:{stream.socket.getsockname()[1]}"
    comm = TLS(stream, local, address, deserialize=True)
    try:
        info = comm.handshake_info()
        await comm.write(info)
        remote = await comm.read()
        comm.handshake_options = comm.handshake_configuration(info, remote)
        await comm.write({**msg, "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def test_a_worker_certificate_acts_only_on_workers_at_its_own_address(tmp_path: Path) -> None:
    """All workers share one certificate: the peer's address tells a worker from its neighbours."""
    import asyncio

    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    security = _worker_security(cluster, tmp_path)
    client = distributed.default_client()
    (victim,) = client.scheduler_info()["workers"]
    victim_name = client.scheduler_info()["workers"][victim]["name"]
    impostor = "tls://127.0.0.1:1"
    for msg in [
        {"op": "retire_workers", "workers": [victim], "close_workers": True},
        {"op": "retire_workers", "names": [victim_name], "close_workers": True},
        {"op": "retire_workers", "n": 1},  # letting the scheduler pick is refused too
        {"op": "unregister", "address": victim, "stimulus_id": "attack"},
        {"op": "register-worker", "address": impostor, "nthreads": 1, "stimulus_id": "x"},
    ]:
        reply = asyncio.run(_request_from("127.0.0.2", cluster.scheduler_address, security, msg))
        assert reply.get("status") == "uncaught-error", (msg, reply)
        assert "may register, unregister or retire only itself" in str(reply["exception"]), reply
    assert list(client.scheduler_info()["workers"]) == [victim]
    assert client.submit(sum, [1, 2]).result(timeout=30) == 3
    # from the victim's own address, the same certificate may retire it (a spot eviction)
    msg = {"op": "retire_workers", "workers": [victim], "close_workers": True, "remove": True}
    reply = asyncio.run(_request_from("127.0.0.1", cluster.scheduler_address, security, msg))
    assert victim in reply, reply


def _listening(pid: int) -> list[tuple[str, int]]:
    """Return the TCP (host, port) pairs process ``pid`` listens on."""
    import psutil

    found = []
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN:
            found.append((conn.laddr.ip, conn.laddr.port))
    return found


def _answers_http(host: str, port: int, path: str = "/json/identity.json") -> bytes:
    """Send a plain HTTP GET; return what came back (b'' when the connection closed)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    with socket.create_connection((target, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n".encode())
        try:
            return sock.recv(1024)
        except (ConnectionResetError, TimeoutError):
            return b""


def test_nothing_answers_plain_http_unless_the_dashboard_is_asked_for(azm_home: Path) -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    pids = [os.getpid(), *(p.pid for p in processes_under(azm_home))]
    sockets = [(pid, address) for pid in pids for address in _listening(pid)]
    assert len(sockets) >= 3, sockets  # the scheduler, the nanny and the worker listen (TLS)
    for pid, (host, port) in sockets:
        reply = _answers_http(host, port)
        assert not reply.startswith(b"HTTP"), (pid, host, port, reply[:200])
    assert cluster.scheduler is not None
    assert "dashboard" not in cluster.scheduler.services
    azmanagers.rmprocs()

    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=60, dashboard=True)
    assert cluster.scheduler is not None
    dashboard = cluster.scheduler.services["dashboard"]
    (bound,) = {address for address in _listening(os.getpid()) if address[1] == dashboard.port}
    assert bound[0] == "127.0.0.1"  # loopback only: reach it through an ssh tunnel
    assert _answers_http(*bound).startswith(b"HTTP/1.1 200")
    assert cluster.dashboard_link.startswith("http://127.0.0.1:")


def test_a_queue_in_a_task_says_to_use_workers_can_submit() -> None:
    def _use_a_queue() -> int:  # defined here: pickled by value for the workers
        queue = distributed.Queue("azm-test-queue")
        queue.put(1)
        return int(queue.get())

    azmanagers.addprocs("local", 1, waitfor=True, timeout=60)
    client = distributed.default_client()
    with pytest.raises(Exception, match="workers_can_submit=True") as info:
        client.submit(_use_a_queue, pure=False).result(timeout=60)
    assert not isinstance(info.value, ImportError), repr(info.value)
    assert isinstance(info.value, PermissionError), repr(info.value)
