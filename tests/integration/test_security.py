"""TLS between scheduler and workers is enforced; workers get only their cluster's credentials."""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path

import distributed
import pytest

import azmanagers
from azmanagers.boot import decode_payload
from azmanagers.tls import make_cluster_credentials
from tests.conftest import processes_under

pytestmark = pytest.mark.integration


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    return host, int(port)


def test_plain_tcp_and_certless_tls_are_refused_mutual_tls_works(tmp_path: Path) -> None:
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

    # 3. TLS that trusts the CA but presents no client certificate is rejected.
    ctx = ssl.create_default_context(cadata=cluster.credentials.ca)
    ctx.check_hostname = False
    refused = (ssl.SSLError, ConnectionResetError, BrokenPipeError, TimeoutError)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        pytest.raises(refused),
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"x" * 16)
        if not tls.recv(16):
            raise ConnectionResetError("closed by the scheduler")

    # 4. A certificate from ANOTHER cluster's CA is rejected too.
    other = make_cluster_credentials("other")
    foreign = distributed.security.Security(
        tls_ca_file=other.ca,
        tls_client_cert=other.client.cert,
        tls_client_key=other.client.key,
        require_encryption=True,
    )
    with pytest.raises((OSError, TimeoutError)):
        distributed.Client(
            cluster.scheduler_address, security=foreign, timeout=3, set_as_default=False
        )

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
