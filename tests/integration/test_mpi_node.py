"""Multi-node runs on the workers: members over real Dask workers, the launch shim over real TLS."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from distributed import Client

from azmanagers.batch import mpinode, mpishim
from azmanagers.tls import make_cluster_credentials, make_self_signed
from tests.conftest import local_client

pytestmark = pytest.mark.integration

SHIM = mpishim.__file__


def _wait_until(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    return check()


@pytest.fixture
def launches(tmp_path: Path) -> Iterator[tuple[mpishim.LaunchServer, dict[str, Any], str]]:
    """A secondary's launch listener on 127.0.0.5 and a launch map that names it."""
    creds = make_cluster_credentials("mpi-node-test")
    token = secrets.token_hex(16)
    run_dir = tmp_path / "attempt" / "wd"
    run_dir.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], mpinode.GANG_VARIABLE: "gang-launch-test"}
    tls = (creds.ca, creds.worker.cert, creds.worker.key)
    server = mpishim.LaunchServer("127.0.0.5", tls, token, env, run_dir)
    port = server.start()
    files = {}
    for name, text in (("ca", creds.ca), ("cert", creds.worker.cert), ("key", creds.worker.key)):
        files[name] = str(mpinode._private(tmp_path / f"{name}.pem", text))
    launch = {"token": token, **files, "ports": {"127.0.0.5": port}, "self": "127.0.0.9"}
    try:
        yield server, launch, str(tmp_path)
    finally:
        server.close()


def _shim(launch: dict[str, Any], folder: str, *args: str, timeout_s: float = 30.0) -> Any:
    path = Path(folder) / f"launch-{secrets.token_hex(4)}.json"
    mpinode._private(path, json.dumps(launch))
    env = {**os.environ, mpishim.LAUNCH_MAP_VARIABLE: str(path)}
    return subprocess.run(
        [sys.executable, SHIM, *args], env=env, capture_output=True, timeout=timeout_s, check=False
    )


def test_the_shim_runs_a_command_on_the_member_and_returns_its_status(launches: Any) -> None:
    _, launch, folder = launches
    done = _shim(
        launch, folder, "-x", "127.0.0.5", "echo", "out-$AZM_MPI_HOST;", "echo err >&2;", "exit 7"
    )
    assert done.returncode == 7, done
    assert done.stdout == b"out-127.0.0.5\n"
    assert done.stderr == b"err\n"
    # its own host: run here, as ssh to oneself would
    done = _shim(launch, folder, "127.0.0.9", "echo", "here-$AZM_MPI_HOST")
    assert (done.returncode, done.stdout) == (0, b"here-127.0.0.9\n")
    # a host not of this run: ssh's 255
    done = _shim(launch, folder, "127.0.0.77", "true")
    assert done.returncode == 255 and b"not a node of this run" in done.stderr


def test_a_wrong_token_is_refused(launches: Any) -> None:
    server, launch, folder = launches
    marker = Path(folder) / "ran"
    done = _shim({**launch, "token": "0" * 32}, folder, "127.0.0.5", "touch", str(marker))
    assert done.returncode == 255, done
    assert not marker.exists()
    assert server.running == 0


def test_a_client_without_a_certificate_of_the_clusters_ca_is_refused(
    launches: Any, tmp_path: Path
) -> None:
    server, launch, folder = launches
    marker = Path(folder) / "ran"
    stranger = make_self_signed("stranger")  # right token, but not the cluster's CA
    cert = mpinode._private(tmp_path / "stranger.pem", stranger.cert)
    key = mpinode._private(tmp_path / "stranger.key", stranger.key)
    done = _shim(
        {**launch, "cert": str(cert), "key": str(key)}, folder, "127.0.0.5", "touch", str(marker)
    )
    assert done.returncode == 255, done
    # and a client with no certificate at all
    context = ssl.create_default_context(cafile=launch["ca"])
    context.check_hostname = False
    port = launch["ports"]["127.0.0.5"]
    with (
        socket.create_connection(("127.0.0.5", port), timeout=10) as raw,
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        context.wrap_socket(raw) as conn,
    ):
        request = json.dumps({"argv": ["touch", str(marker)], "cwd": folder}).encode()
        conn.sendall(mpishim.frame(b"t", launch["token"].encode()) + mpishim.frame(b"a", request))
        if not conn.recv(1):
            raise ConnectionError("closed")
    time.sleep(0.5)
    assert not marker.exists()
    assert server.running == 0


def test_a_dropped_shim_connection_kills_the_launched_group(launches: Any) -> None:
    server, launch, folder = launches
    pidfile = Path(folder) / "pid"
    path = Path(folder) / "launch.json"
    mpinode._private(path, json.dumps(launch))
    shim = subprocess.Popen(
        [sys.executable, SHIM, "127.0.0.5", f"(sleep 300 & echo $! > {pidfile}; wait)"],
        env={**os.environ, mpishim.LAUNCH_MAP_VARIABLE: str(path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_until(lambda: pidfile.exists() and pidfile.read_text().strip())
        sleeper = psutil.Process(int(pidfile.read_text()))
        assert sleeper.environ().get(mpinode.GANG_VARIABLE) == "gang-launch-test"
        assert server.running == 1
        shim.send_signal(signal.SIGKILL)  # Hydra gone: the connection drops
        shim.wait(10)
        assert _wait_until(lambda: not sleeper.is_running() or sleeper.status() == "zombie")
        assert _wait_until(lambda: server.running == 0)
    finally:
        shim.kill()
        shim.wait(10)


def test_end_gang_without_a_member_is_remembered() -> None:
    assert mpinode.end_gang("gang-nobody") is False
    assert mpinode.deliver_hosts("gang-nobody", ["127.0.0.1"], {}) is False


@pytest.fixture
def three(azm_home: Path) -> Iterator[Client]:
    """A local cluster of 3 process-VMs (under the test's own home) and a client of it."""
    del azm_home
    with local_client(3) as client:
        yield client


def _host(address: str) -> str:
    return address.rsplit("://", 1)[-1].rsplit(":", 1)[0]


def test_process_vms_listen_on_loopback_addresses_of_their_own(three: Client) -> None:
    workers = three.scheduler_info()["workers"]
    hosts = {_host(address) for address in workers}
    assert len(hosts) == 3, workers
    assert all(h.startswith("127.") and h != "127.0.0.1" for h in hosts), hosts
    # the guard let each register although its connections come from 127.0.0.1; work runs
    futures = [three.submit(sum, [i, 1], workers=[a], pure=False) for i, a in enumerate(workers)]
    assert sorted(f.result(timeout=30) for f in futures) == [1, 2, 3]


def _member_function() -> Any:
    """A task running member_step with a RunCommand of bash in a temporary folder (made here
    so that it travels by value: the workers cannot import tests/)."""

    def member(member: mpinode.MpiMember, command: str) -> tuple[int | None, str, str]:
        import os
        import subprocess
        import tempfile
        from pathlib import Path

        from azmanagers.batch.mpinode import member_step

        with tempfile.TemporaryDirectory(prefix="azm-member-") as tmp:
            run_dir = Path(tmp) / "wd"
            run_dir.mkdir()
            out = Path(tmp) / "stdout.txt"
            env = dict(os.environ)

            def run(line: str) -> tuple[int | None, str]:
                with open(out, "ab") as log:
                    done = subprocess.run(
                        ["bash", "-c", line],
                        cwd=run_dir,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        timeout=120,
                        check=False,
                    )
                return done.returncode, "exit"

            code, reason = member_step(member, run_dir, env, run, "session-1", command=command)
            return code, reason, out.read_text() if out.exists() else ""

    return member


def test_members_on_three_workers_run_an_mpi_job_across_them(three: Client) -> None:
    member = _member_function()
    addresses = sorted(three.scheduler_info()["workers"])
    gang, topic, token = (
        f"gang-{secrets.token_hex(4)}",
        f"mpi-{secrets.token_hex(4)}",
        secrets.token_hex(16),
    )
    events: list[dict[str, Any]] = []
    three.subscribe_topic(topic, lambda event: events.append(event[1]))
    program = (
        "import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "s = c.allreduce(c.Get_rank() + 1); "
        "e = os.environ.get; "  # one write per line: ranks' outputs interleave otherwise
        "os.write(1, ' '.join(map(str, ['rank', c.Get_rank(), c.Get_size(), s, "
        "e('AZM_MPI_HOST'), e('AZM_HOST_LIST')])).encode() + bytes([10]))"
    )
    command = f'{sys.executable} -c "{program}"'
    futures = [
        three.submit(
            member,
            mpinode.MpiMember(gang, i, 3, token, topic, 2, None, oversubscribe=True, wrap=True),
            command,
            workers=[address],
            allow_other_workers=False,
            pure=False,
        )
        for i, address in enumerate(addresses)
    ]
    try:
        assert _wait_until(lambda: len(events) == 3, 60), events
        announced = sorted(events, key=lambda e: e["index"])
        assert all(e["ready"] and e["gang"] == gang for e in announced), announced
        hosts = [e["host"] for e in announced]
        assert hosts == [_host(a) for a in addresses]
        assert announced[0]["port"] == 0 and all(e["port"] > 0 for e in announced[1:])
        ports = {e["host"]: e["port"] for e in announced[1:]}
        delivered = three.run(mpinode.deliver_hosts, gang, hosts, ports, workers=[addresses[0]])
        assert delivered == {addresses[0]: True}
        code, reason, output = futures[0].result(timeout=90)
        assert (code, reason) == (0, "exit"), output
        ranks = [line.split() for line in output.splitlines() if line.startswith("rank ")]
        assert sorted(int(r[1]) for r in ranks) == list(range(6)), output
        assert {(r[2], r[3]) for r in ranks} == {("6", str(sum(range(1, 7))))}, output
        assert {r[4] for r in ranks} == set(hosts), output  # 2 ranks on each of 3 hosts
        assert sorted(r[4] for r in ranks) == sorted(hosts * 2), output
        assert {r[5] for r in ranks} == {",".join(hosts)}
        ended = three.run(mpinode.end_gang, gang, workers=addresses[1:])
        assert ended == {a: True for a in addresses[1:]}
        for future in futures[1:]:
            assert future.result(timeout=30)[:2] == (0, "exit")
    finally:
        three.run(mpinode.end_gang, gang)
        three.unsubscribe_topic(topic)
    left = _wait_until(lambda: not _marked(gang), 10)
    assert left, _marked(gang)


def _marked(gang: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(mpinode.GANG_VARIABLE) == gang and proc.status() != "zombie":
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def test_a_failed_coordination_a_bad_ranks_count_and_a_silent_driver_end_the_members(
    three: Client,
) -> None:
    member = _member_function()
    addresses = sorted(three.scheduler_info()["workers"])
    topic, token = f"mpi-{secrets.token_hex(4)}", secrets.token_hex(16)
    events: list[dict[str, Any]] = []
    three.subscribe_topic(topic, lambda event: events.append(event[1]))
    cores = three.run(os.cpu_count, workers=[addresses[0]])[addresses[0]]
    members = [
        # a coordination command that fails: announced not ready, its outcome returned
        mpinode.MpiMember("gang-a", 1, 2, token, topic, 1, "echo coord; exit 3"),
        # more ranks than cores without oversubscribe: the primary's step fails saying so
        mpinode.MpiMember("gang-b", 0, 2, token, topic, cores + 1, None),
        # a secondary whose driver went away (its task released): ends, its listener closed
        mpinode.MpiMember("gang-c", 1, 2, token, topic, 1, None),
    ]
    futures = [
        three.submit(member, m, "true", workers=[a], allow_other_workers=False, pure=False)
        for m, a in zip(members, addresses, strict=True)
    ]
    try:
        assert futures[0].result(timeout=30)[:2] == (3, "exit")
        assert _wait_until(lambda: any(e["gang"] == "gang-b" for e in events), 30)
        hosts = [_host(addresses[1]), _host(addresses[2])]
        assert three.run(mpinode.deliver_hosts, "gang-b", hosts, {}, workers=[addresses[1]])
        with pytest.raises(Exception, match=rf"ranks_per_node={cores + 1} .*oversubscribe=True"):
            futures[1].result(timeout=30)
        assert _wait_until(lambda: any(e["gang"] == "gang-c" for e in events), 30)
        futures[2].cancel()  # what the scheduler does to the tasks of a client that went away
        by_gang = {e["gang"]: e for e in events}
        assert by_gang["gang-a"]["ready"] is False and by_gang["gang-a"]["exit_code"] == 3
        assert by_gang["gang-c"]["ready"] is True and by_gang["gang-c"]["port"] > 0
        port = by_gang["gang-c"]["port"]

        def refused() -> bool:
            try:
                socket.create_connection((by_gang["gang-c"]["host"], port), timeout=5).close()
            except OSError:
                return True
            return False

        assert _wait_until(refused, 10)  # the listener is gone with its member
        # a secondary takes no go; a gang ended before its member arrives ends it at once
        assert three.run(mpinode.end_gang, "gang-d", workers=[addresses[2]])[addresses[2]] is False
        late = mpinode.MpiMember("gang-d", 1, 2, token, topic, 1, None)
        done = three.submit(member, late, "", workers=[addresses[2]], pure=False)
        assert done.result(timeout=30)[:2] == (0, "exit")
    finally:
        for gang in ("gang-a", "gang-b", "gang-c", "gang-d"):
            three.run(mpinode.end_gang, gang)
        three.unsubscribe_topic(topic)
