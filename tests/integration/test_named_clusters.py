"""Named clusters on the local provider: a head that outlives its caller, attach, resize, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import distributed
import psutil
import pytest

import azmanagers
from azmanagers.detached.client import ServiceAddress, ServiceClient
from azmanagers.errors import ConfigError, DetachedServiceError, WaitTimeoutError
from azmanagers.named.handle import STORE, NamedCluster, named_cluster
from azmanagers.named.refresh import refresh
from azmanagers.named.stop import stop_cluster
from azmanagers.named.transfer import export_record, import_record
from azmanagers.named.wire import HEAD_RESIZE, HEAD_STATUS, HEAD_STOP, NODE_STATES
from azmanagers.providers import get_provider
from azmanagers.providers.base import InstanceState
from azmanagers.providers.boot import decode_payload
from azmanagers.state.clusters import ClusterRecord
from tests.conftest import eventually, processes_under

pytestmark = pytest.mark.integration

SHARED = "t-shared"
"""The module's cluster: started by a process that is then killed, stopped by the last test."""
START_TIMEOUT_S = 90.0


@contextlib.contextmanager
def _home(home: Path) -> Iterator[None]:
    """Point AZMANAGERS_HOME at ``home`` for the block."""
    before = os.environ.get("AZMANAGERS_HOME")
    os.environ["AZMANAGERS_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AZMANAGERS_HOME", None)
        else:
            os.environ["AZMANAGERS_HOME"] = before


def _kill_all_under(home: Path) -> None:
    for proc in processes_under(home):
        with contextlib.suppress(psutil.Error, OSError):
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)


def _stop_quietly(name: str) -> None:
    """The cleanup of a test's cluster: stop it if a record is left (twice if need be)."""
    for _ in range(2):
        if not STORE.exists(name):
            return
        with contextlib.suppress(Exception):
            stop_cluster(name)


def _nothing_left(name: str, home: Path) -> None:
    """Nothing tagged with the cluster, no record, no process-VM of the cluster running."""
    assert get_provider("local").list_owned_resources(cluster=name) == []
    assert not STORE.exists(name)
    eventually(
        lambda: (
            not [
                p
                for p in processes_under(home)
                if name in p.environ().get("AZMANAGERS_INSTANCE_DIR")
            ]
        ),
        f"the process-VMs of {name} to end",
        timeout=15,
    )


def _python(script: str, home: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "AZMANAGERS_HOME": str(home)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Start SHARED (2 nodes, wait) from a subprocess that is killed -9 once start returned."""
    home = tmp_path_factory.mktemp("shared-home")
    proc = _python(
        f"""
        import time, azmanagers
        azmanagers.start_cluster({SHARED!r}, nodes=2, wait=True, timeout={START_TIMEOUT_S})
        print("STARTED", flush=True)
        time.sleep(600)
        """,
        home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # ends when it prints or dies
        _kill(proc)
        assert line.strip() == "STARTED", proc.stderr.read() if proc.stderr else ""
        yield home
    finally:
        _kill(proc)
        with _home(home):
            _stop_quietly(SHARED)
        leaked = processes_under(home)
        _kill_all_under(home)
        assert not leaked, f"the shared cluster left processes: {leaked}"


@pytest.fixture
def in_shared(shared: Path, azm_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test works in the shared cluster's AZMANAGERS_HOME."""
    del azm_home  # its leak check still runs (on its own, empty, home)
    monkeypatch.setenv("AZMANAGERS_HOME", str(shared))
    return shared


# -- the shared cluster: attach, transfer, resize, guard, the head's routes ---------------


def test_a_cluster_started_by_a_killed_process_runs_work_for_another(in_shared: Path) -> None:
    cluster = named_cluster(SHARED)
    assert cluster.record.status == "up" and cluster.record.nodes == 2
    assert cluster.record.token not in repr(cluster) + repr(cluster.record)
    assert stat.S_IMODE(STORE.path(SHARED).stat().st_mode) == 0o600

    def _square(x: int) -> int:  # local: pickled by value (the head cannot import tests/)
        return x * x

    client = azmanagers.connect(SHARED, timeout=30)
    try:
        assert client.submit(_square, 12).result(timeout=30) == 144
        assert sum(client.gather(client.map(_square, range(10)))) == 285
        assert len(client.scheduler_info()["workers"]) == 2
    finally:
        client.close()
    status = cluster.status()
    assert status.joined == 2 and status.target == 2 and status.scheduler
    assert [r.name for r in azmanagers.named_clusters()] == [SHARED]


def test_export_then_import_into_another_home_connects_and_runs_work(
    in_shared: Path, tmp_path: Path
) -> None:
    exported = export_record(SHARED, tmp_path / "shared.json")
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="folder"):
        export_record(SHARED, tmp_path)
    other = tmp_path / "other-home"
    proc = _python(
        f"""
        import azmanagers
        from azmanagers.named.transfer import import_record
        from azmanagers.errors import ConfigError
        import_record({str(exported)!r})
        try:
            import_record({str(exported)!r})
        except ConfigError as exc:
            print("REFUSED", "replace" in str(exc))
        import_record({str(exported)!r}, replace=True)
        client = azmanagers.connect({SHARED!r}, timeout=30)
        print("RESULT", client.submit(pow, 3, 4).result(timeout=30))
        client.close()
        """,
        other,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _kill(proc)
    assert "REFUSED True" in out and "RESULT 81" in out, err
    imported = other / "state" / "clusters" / f"{SHARED}.json"
    assert stat.S_IMODE(imported.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schema_version": 99}, "newer azmanagers"),
        ({"schema_version": 0}, "too old"),
        ({"kind": "vms"}, "kind"),
        ({"token": 5}, "token"),
        ({"surprise": 1}, "unknown fields"),
        ({"name": "../../etc"}, "not a valid cluster name"),
    ],
)
def test_a_record_of_another_version_or_shape_is_refused_on_import(
    in_shared: Path, tmp_path: Path, change: dict[str, object], match: str
) -> None:
    data = json.loads(STORE.path(SHARED).read_text())
    data.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with _home(tmp_path / "other-home"), pytest.raises(ConfigError, match=match):
        import_record(path)
    for junk in ("[]", '"text"', "{", "\xff"):
        path.write_text(junk, errors="surrogateescape")
        with _home(tmp_path / "other-home"), pytest.raises(ConfigError, match="not a cluster"):
            import_record(path)
    path.write_bytes(b" " * (1024 * 1024 + 1))
    with _home(tmp_path / "other-home"), pytest.raises(ConfigError, match="1 MiB"):
        import_record(path)


def test_a_record_of_a_newer_schema_in_the_store_gives_a_clear_error(
    azm_home: Path,
) -> None:
    folder = STORE.folder
    folder.mkdir(parents=True)
    (folder / "t-future.json").write_text(
        json.dumps({"kind": "clusters", "schema_version": 7, "name": "t-future"})
    )
    (folder / "t-future.json").chmod(0o600)
    for call in (named_cluster, azmanagers.connect, stop_cluster):
        with pytest.raises(ConfigError, match="newer azmanagers"):
            call("t-future")


def test_resize_up_then_down_and_the_nodes_show_their_states(in_shared: Path) -> None:
    cluster = named_cluster(SHARED)
    status = cluster.resize(3)
    assert status.target == 3 and named_cluster(SHARED).record.nodes == 3
    assert {n.state for n in status.nodes} <= set(NODE_STATES)
    status = cluster.wait_for_nodes(3, timeout=60)
    assert status.joined == 3 and len(status.nodes) == 3
    assert all(n.state == "joined" and n.address and n.joined_at > 0 for n in status.nodes)
    status = cluster.resize(add=-2)
    assert status.target == 1 and named_cluster(SHARED).record.nodes == 1
    assert {n.state for n in status.nodes} <= set(NODE_STATES)

    def down_to_one() -> bool:
        now = cluster.status()
        return now.joined == 1 and len(now.nodes) == 1

    eventually(down_to_one, "the pool to shrink to one joined node", timeout=60, step_s=0.5)
    assert len(get_provider("local").list_instances(SHARED)) == 1
    for bad in (-1, "3", 2.0, True, None):
        with pytest.raises(ConfigError):
            cluster.resize(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="one of them"):
        cluster.resize(2, add=1)
    with pytest.raises(ConfigError, match=r"at most 16|max_instances"):
        cluster.resize(10**6)
    with pytest.raises(ConfigError, match="least is 0"):
        cluster.resize(add=-5)
    assert cluster.status().target == 1 and named_cluster(SHARED).record.nodes == 1


def _worker_security(home: Path, folder: Path) -> distributed.Security:
    """What a worker VM of the shared cluster holds: the CA and the worker's key pair."""
    payloads = sorted((home / "state" / "local" / "pools" / SHARED).rglob("payload.json.gz"))
    assert payloads, "no worker of the shared cluster has a payload"
    tls = decode_payload(payloads[0].read_bytes())["tls"]
    assert isinstance(tls, dict)
    for key, file in (("ca", "ca.pem"), ("cert", "w.pem"), ("key", "w.key")):
        (folder / file).write_text(str(tls[key]))
    return distributed.Security(
        tls_ca_file=str(folder / "ca.pem"),
        tls_client_cert=str(folder / "w.pem"),
        tls_client_key=str(folder / "w.key"),
        require_encryption=True,
    )


def test_the_heads_scheduler_refuses_a_worker_certificate_acting_as_a_client(
    in_shared: Path, tmp_path: Path
) -> None:
    import cloudpickle
    from distributed.core import rpc

    address = named_cluster(SHARED).scheduler_address
    security = _worker_security(in_shared, tmp_path)
    with pytest.raises(Exception, match="refused 'register-client' from a worker's certificate"):
        distributed.Client(address, security=security, timeout=20)

    async def as_worker(op: str, **kwargs: object) -> object:
        comm = rpc(address, connection_args=security.get_connection_args("client"))
        try:
            return await getattr(comm, op)(**kwargs)
        finally:
            await comm.close_rpc()

    ran = tmp_path / "ran-on-the-head"
    attack = cloudpickle.dumps(lambda: ran.write_text("pwned"))
    for op, kwargs in [
        ("run_function", {"function": attack}),
        ("register_scheduler_plugin", {"plugin": attack, "name": "x", "idempotent": False}),
    ]:
        with pytest.raises(Exception, match=f"refused '{op}'"):
            asyncio.run(as_worker(op, **kwargs))
    assert not ran.exists()
    client = azmanagers.connect(SHARED, timeout=30)  # the record's client still may
    try:
        assert client.submit(pow, 5, 2).result(timeout=30) == 25
    finally:
        client.close()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"nodes": 10**6}, 409),
        ({"nodes": 2**80}, 409),
        ({"nodes": "x"}, 400),
        ({"nodes": 1.5}, 400),
        ({"nodes": True}, 400),
        ({"nodes": None}, 400),
        ({"add": -(10**30)}, 400),
        ({"nodes": -1}, 400),
        ({"nodes": 1, "add": 1}, 400),
        ({"size": 1}, 400),
        ({}, 400),
        ([], 400),
        ([1], 400),
        ("nodes", 400),
        (7, 400),
        # over a resize's 4 KiB: refused unread, the connection closed under the sender
        ({"nodes": "x" * (8 * 1024 * 1024)}, "413|EOF|reset|Broken pipe"),
    ],
)
def test_garbage_resize_bodies_through_the_raw_service_change_nothing(
    in_shared: Path, body: object, code: int | str
) -> None:
    cluster = named_cluster(SHARED)
    before = cluster.status().target
    try:
        with pytest.raises(DetachedServiceError, match=f"answered {code}|{code}"):
            cluster.service().request("POST", HEAD_RESIZE.path(), body=body)
    finally:
        cluster.close()
    assert named_cluster(SHARED).status().target == before


def test_raw_bodies_that_are_not_json_or_too_large_are_refused(in_shared: Path) -> None:
    record = named_cluster(SHARED).record
    before = named_cluster(SHARED).status().target
    for route in (HEAD_RESIZE, HEAD_STOP):  # 1 GiB announced, never sent: 413 at once
        started = time.monotonic()
        reply = _raw_request(
            record.port,
            "POST",
            route.path(),
            {"Authorization": f"Bearer {record.token}", "Content-Length": str(2**30)},
        )
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert time.monotonic() - started < 5
    for raw in (b"{", b"\xff\xfe", b'{"nodes": NaN}', b'{"nodes": 1e400}', b"[" * 4000):
        reply = _raw_request(
            record.port,
            "POST",
            HEAD_RESIZE.path(),
            {"Authorization": f"Bearer {record.token}", "Content-Length": str(len(raw))},
            raw,
        )
        assert reply.split(b" ")[1] in (b"400", b"413"), reply[:200]
    status = named_cluster(SHARED).status()  # the stop with a body stopped nothing
    assert status.target == before and status.joined == before


def _raw_request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    """One HTTPS request over a raw socket (the certificate not checked); the reply's head."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw_sock,
        context.wrap_socket(raw_sock) as sock,
    ):
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode() + body)
        return sock.recv(4096)


def _stranger(record: ClusterRecord, token: str) -> ServiceClient:
    return ServiceClient(
        ServiceAddress(
            record.head, record.host, record.port, record.cert, record.fingerprint, token
        )
    )


def test_the_heads_routes_answer_401_without_the_token_before_any_body(in_shared: Path) -> None:
    record = named_cluster(SHARED).record
    before = named_cluster(SHARED).status().target
    for route in (HEAD_RESIZE, HEAD_STOP):
        started = time.monotonic()
        # a body of 100 MB is announced and never sent: the 401 must not wait for it
        reply = _raw_request(record.port, "POST", route.path(), {"Content-Length": "100000000"})
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert time.monotonic() - started < 5
    calls: list[tuple[str, str, object]] = [
        ("GET", HEAD_STATUS.path(), None),
        ("POST", HEAD_STOP.path(), None),
        ("POST", HEAD_RESIZE.path(), {"nodes": 0}),
    ]
    for token in ("", "wrong", record.token[:-1], record.token + "x", record.token.upper()):
        for method, path, body in calls:
            stranger = _stranger(record, token)  # a new connection each
            try:
                with pytest.raises(DetachedServiceError, match="401"):
                    stranger.request(method, path, body=body)
            finally:
                stranger.close()
    status = named_cluster(SHARED).status()  # a stop without the token stopped nothing
    assert status.target == before and status.joined == before


def test_a_wrong_token_gives_401_on_every_call_of_one_handle(in_shared: Path) -> None:
    record = named_cluster(SHARED).record
    for _ in range(5):  # it fails ~9 times in 10 on this machine
        wrong = NamedCluster(replace(record, token="wrong"))
        try:
            with pytest.raises(DetachedServiceError, match="401"):
                wrong.status()
            with pytest.raises((ConfigError, DetachedServiceError), match="401"):
                wrong.resize(1)
        finally:
            wrong.close()


def test_a_wrong_token_in_the_record_gives_a_401_error(in_shared: Path) -> None:
    path = STORE.path(SHARED)
    original = path.read_text()
    try:
        record = named_cluster(SHARED).record
        STORE.save(replace(record, token="stolen-or-stale"))
        with pytest.raises(DetachedServiceError, match=r"401.*token|token.*401"):
            named_cluster(SHARED).status()
        with pytest.raises((ConfigError, DetachedServiceError), match="401"):
            named_cluster(SHARED).resize(2)
    finally:
        path.write_text(original)
    assert named_cluster(SHARED).status().target == named_cluster(SHARED).record.nodes


def test_bad_input_to_start_is_refused_and_leaves_nothing(in_shared: Path) -> None:
    before = named_cluster(SHARED).status()
    with pytest.raises(ConfigError, match=r"exists already.*stop"):
        azmanagers.start_cluster(SHARED)
    bad_names = ["ab", "A-bc", "-abc", "abc-", "a" * 41, "a_bc", "", "abc\n", "ünï", "a b", "a/b"]
    for name in [*bad_names, None, 123]:
        with pytest.raises(ConfigError, match="not a valid cluster name"):
            azmanagers.start_cluster(name)  # type: ignore[arg-type]
    for nodes in (0, -1, True, 1.5, "2", None):
        with pytest.raises(ConfigError, match="nodes"):
            azmanagers.start_cluster("t-bad", nodes=nodes)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at most 16"):
        azmanagers.start_cluster("t-bad", nodes=17)
    with pytest.raises(ConfigError, match="Known scaleset templates: local"):
        azmanagers.start_cluster("t-bad", template="no-such-template")
    with pytest.raises(ConfigError, match="no-such-vm"):
        azmanagers.start_cluster("t-bad", head_template="no-such-vm")
    for kwargs in ({"autostop": "forever"}, {"timeout": -1}, {"timeout": "soon"}):
        with pytest.raises(ConfigError):
            azmanagers.start_cluster("t-bad", **kwargs)
    assert [r.name for r in azmanagers.named_clusters()] == [SHARED]
    assert get_provider("local").list_owned_resources(cluster="t-bad") == []
    after = named_cluster(SHARED).status()  # the shared one was not touched
    assert (after.target, after.started_at) == (before.target, before.started_at)
    with pytest.raises(ConfigError, match=r"no cluster named 't-nothing'.*known: t-shared"):
        azmanagers.connect("t-nothing")


def test_stop_leaves_nothing_and_a_second_stop_says_there_is_nothing(in_shared: Path) -> None:
    stop_cluster(SHARED)
    _nothing_left(SHARED, in_shared)
    assert not (in_shared / "state" / "local" / "pools" / SHARED).exists()
    assert not (in_shared / "state" / "local" / "vms" / f"{SHARED}-head").exists()
    with pytest.raises(ConfigError, match="no cluster named"):
        stop_cluster(SHARED)
    with pytest.raises(ConfigError, match="no cluster named"):
        azmanagers.connect(SHARED)


# -- clusters a test destroys: crashes, a killed head, autostop, races ---------------------


@pytest.mark.parametrize("when", ["record-written", "head-booting"])
def test_a_start_killed_part_way_is_finished_by_stop(azm_home: Path, when: str) -> None:
    name = f"t-crash-{when.split('-')[0]}"
    proc = _python(
        f"import azmanagers; azmanagers.start_cluster({name!r}, nodes=2, wait=True)",
        azm_home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    head_file = azm_home / "state" / "local" / "vms" / f"{name}-head" / "vm.json"
    try:
        if when == "record-written":
            eventually(lambda: STORE.exists(name), "the record", timeout=30, step_s=0.002)
        else:
            eventually(head_file.exists, "the head VM", timeout=30, step_s=0.01)
        _kill(proc)
        record = STORE.load(name)
        assert record is not None and record.status == "creating"
        with pytest.raises(ConfigError):
            azmanagers.connect(name)
        stop_cluster(name)
        _nothing_left(name, azm_home)
        time.sleep(2)  # a head that was booting must not make a pool after the stop
        _nothing_left(name, azm_home)
    finally:
        _kill(proc)
        _stop_quietly(name)


def _head_processes(home: Path, name: str) -> list[psutil.Process]:
    folder = str(home / "state" / "local" / "vms" / f"{name}-head")
    found = []
    for process in processes_under(home):
        try:  # a process may end between the listing and the read
            if process.environ().get("AZMANAGERS_INSTANCE_DIR") == folder:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _kill_groups(processes: list[psutil.Process]) -> None:
    groups = set()
    for process in processes:
        try:
            groups.add(os.getpgid(process.pid))
        except ProcessLookupError:
            continue
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def test_a_head_killed_by_hand_is_marked_stopped_by_refresh_and_stop_still_works(
    azm_home: Path,
) -> None:
    name = "t-killed"
    try:
        cluster = azmanagers.start_cluster(name, nodes=1, wait=True, timeout=60)
        cluster.close()
        heads = _head_processes(azm_home, name)
        assert heads
        _kill_groups(heads)
        provider = get_provider("local")

        def head_dead() -> bool:
            info = provider.get_vm(f"{name}-head")
            return info is not None and info.state != InstanceState.RUNNING

        eventually(head_dead, "the head to be dead", timeout=15)
        found = refresh(named_cluster(name).record)
        assert found.record.status == "stopped" and found.status is None
        assert f"{name}-head" in found.record.reason
        assert "pool" in found.record.reason  # its workers' pool is still there
        assert named_cluster(name).record.status == "stopped"  # saved
        assert any("marked stopped" in note for note in found.notes)
        with pytest.raises(ConfigError, match="stopped, not up"):
            azmanagers.connect(name)
        stop_cluster(name)
        _nothing_left(name, azm_home)
    finally:
        _stop_quietly(name)


def test_an_unreachable_head_gives_an_error_naming_the_cluster_and_stop(azm_home: Path) -> None:
    name = "t-unreach"
    try:
        cluster = azmanagers.start_cluster(name, nodes=1)
        cluster.close()
        _kill_groups(_head_processes(azm_home, name))
        eventually(lambda: not _head_processes(azm_home, name), "the head to end", timeout=15)
        with pytest.raises(DetachedServiceError) as caught:
            named_cluster(name).status()
        text = str(caught.value)
        assert f"{name}-head" in text
        assert f"cluster {name}" in text and f"azm cluster stop {name}" in text
    finally:
        _stop_quietly(name)


def test_autostop_deletes_the_pool_and_the_head_and_refresh_shows_it(azm_home: Path) -> None:
    name = "t-auto"
    provider = get_provider("local")
    try:
        cluster = azmanagers.start_cluster(name, nodes=1, autostop=10, wait=True, timeout=60)
        status = cluster.status()
        assert status.autostop_s == 10 and status.clients == 0
        cluster.close()

        def all_gone() -> bool:
            return provider.list_owned_resources(cluster=name) == []

        eventually(all_gone, "autostop to delete the pool and the head", timeout=45, step_s=1)
        found = refresh(named_cluster(name).record)
        assert found.record.status == "stopped"
        assert f"{name}-head" in found.record.reason and "is gone" in found.record.reason
        assert any("marked stopped" in note for note in found.notes)
        again = refresh(found.record)
        assert any("nothing tagged" in note for note in again.notes)
        stop_cluster(name)
        _nothing_left(name, azm_home)
    finally:
        _stop_quietly(name)


def test_two_starts_of_one_name_at_once_one_wins_and_the_other_is_refused(
    azm_home: Path,
) -> None:
    name = "t-twice"
    barrier = threading.Barrier(2)
    results: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(azmanagers.start_cluster(name, nodes=1))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        started = [r for r in results if isinstance(r, NamedCluster)]
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(started) == 1 and len(refused) == 1, results
        assert isinstance(refused[0], ConfigError) and "exists already" in str(refused[0])
        assert started[0].status().scheduler
        assert provider_vms(name) == [f"{name}-head"]
    finally:
        _stop_quietly(name)
    _nothing_left(name, azm_home)


def provider_vms(name: str) -> list[str]:
    return [
        r.name
        for r in get_provider("local").list_owned_resources(cluster=name)
        if r.kind not in ("pool", "scaleset")
    ]


def test_stop_while_start_waits_for_its_nodes(azm_home: Path, fake_python: Path) -> None:
    """The nodes never join (a stuck interpreter): ``start`` waits; ``stop`` ends it all."""
    name = "t-stopwait"
    errors: list[BaseException] = []

    def start() -> None:
        try:
            azmanagers.start_cluster(
                name, nodes=2, wait=True, timeout=60, env={"AZMANAGERS_PYTHON": str(fake_python)}
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    try:
        thread.start()

        def is_up() -> bool:
            found = STORE.load(name) if STORE.exists(name) else None
            return found is not None and found.status == "up"

        eventually(is_up, "the cluster to be up", timeout=60, step_s=0.05)
        time.sleep(1)
        stop_cluster(name)
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert errors and isinstance(errors[0], (DetachedServiceError, WaitTimeoutError)), errors
        _nothing_left(name, azm_home)
    finally:
        thread.join(timeout=60)
        _stop_quietly(name)


def test_stop_while_start_waits_for_its_head_leaves_no_record(azm_home: Path) -> None:
    name = "t-stophead"
    errors: list[BaseException] = []

    def start() -> None:
        try:
            azmanagers.start_cluster(name, nodes=1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    try:
        thread.start()

        def head_made() -> bool:
            found = STORE.load(name) if STORE.exists(name) else None
            return found is not None and found.step == "head-created"

        eventually(head_made, "the head to be made", timeout=30, step_s=0.005)
        stop_cluster(name)
        thread.join(timeout=60)
        assert errors, "start went on after its cluster was stopped"
        assert not STORE.exists(name), STORE.load(name)
        _nothing_left(name, azm_home)
    finally:
        thread.join(timeout=60)
        _stop_quietly(name)


def _closed_port_holding(digits: str) -> int:
    """A loopback port nothing listens on whose number holds ``digits`` (e.g. 40012)."""
    for port in range(int(digits) * 100, int(digits) * 100 + 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port {digits}xx")


def test_resize_of_an_unreachable_head_is_not_reported_as_bad_input(azm_home: Path) -> None:
    """Its address (a port such as 400xx) is in the error: no digits may make it a ConfigError."""
    from azmanagers.tls import fingerprint, make_self_signed

    pair = make_self_signed("azmanagers head t-gone")
    record = ClusterRecord(
        name="t-gone",
        template="local",
        head_template="local",
        provider="local",
        pool="t-gone",
        head="t-gone-head",
        host="127.0.0.1",
        port=_closed_port_holding("400"),
        cert=pair.cert,
        fingerprint=fingerprint(pair.cert),
        token="t",
        status="up",
    )
    with pytest.raises(DetachedServiceError, match="cannot reach"):
        NamedCluster(record).resize(1)
