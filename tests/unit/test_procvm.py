"""Tests of process-VMs and the local provider, with a stand-in agent instead of Dask."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from azmanagers.errors import ConfigError, NotFoundError, ProviderError
from azmanagers.providers import boot
from azmanagers.providers.base import (
    BootSpec,
    Instance,
    InstanceState,
    PoolSpec,
    VMSpec,
)
from azmanagers.providers.gc import gc
from azmanagers.providers.local import procvm
from azmanagers.providers.local.provider import LocalProvider
from azmanagers.providers.tags import (
    TAG_CLUSTER,
    TAG_EXPIRES,
    TAG_OWNER,
    is_expired,
    owner_alive,
    owner_id,
    resource_tags,
)
from tests.conftest import HAS_AZMANAGERS

DEADLINE_S = 10.0
DEAD_OWNER = f"999999:1.00@{socket.gethostname()}"

# The stand-in agent: records its arguments, environment and pid, then exits with
# AZM_TEST_STATUS or sleeps with a child (one that ignores SIGTERM on instance AZM_TEST_STUBBORN).
AGENT = (
    "#!/bin/bash\n"
    + HAS_AZMANAGERS
    + """out="$AZM_TEST_OUT/$AZMANAGERS_INSTANCE_ID"
mkdir -p "$out"
printf '%s\\n' "$@" > "$out/args"
env > "$out/env"
echo "agent $AZMANAGERS_INSTANCE_ID says hello"
case "${AZM_TEST_MODE:-sleep}" in
  exit)
    exit "$AZM_TEST_STATUS" ;;
  *)
    if [ "$AZMANAGERS_INSTANCE_ID" = "${AZM_TEST_STUBBORN:-}" ]; then
      (trap '' TERM; exec sleep 600) &
    else
      sleep 600 &
    fi
    echo $! > "$out/child"
    echo $$ > "$out/pid"
    wait ;;
esac
"""
)


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    path = tmp_path / "fake-python"
    path.write_text(AGENT)
    path.chmod(0o755)
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    made = LocalProvider()
    yield made
    pools = made.root / "pools"
    for entry in sorted(pools.iterdir()) if pools.exists() else []:
        made.delete_pool(entry.name, wait=True)


def spec(
    name: str,
    agent: Path,
    out: Path,
    *,
    cluster: str | None = None,
    owner: str | None = None,
    ttl_s: float = 3600.0,
    max_instances: int = 4,
    **env: str,
) -> PoolSpec:
    boot_env = {"AZMANAGERS_PYTHON": str(agent), "AZM_TEST_OUT": str(out), **env}
    return PoolSpec(
        name=name,
        boot=BootSpec(role="worker", payload={"pool": name}, env=boot_env),
        tags=resource_tags(cluster or name, owner or owner_id(), ttl_s),
        max_instances=max_instances,
    )


def wait_until(what: str, check: Callable[[], object]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.05)


def wait_states(
    provider: LocalProvider, pool: str, check: Callable[[list[Instance]], bool]
) -> list[Instance]:
    found: list[Instance] = []

    def ok() -> bool:
        found[:] = provider.list_instances(pool)
        return check(found)

    wait_until(f"pool {pool} converges (last seen {found})", ok)
    return found


def all_running(n: int) -> Callable[[list[Instance]], bool]:
    return lambda insts: len(insts) == n and all(i.state is InstanceState.RUNNING for i in insts)


def pid_file(out: Path, instance_id: str, name: str = "pid") -> int:
    path = out / instance_id / name
    wait_until(f"{path} is written", lambda: path.exists() and path.read_text().strip())
    return int(path.read_text())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def pool_meta(provider: LocalProvider, pool: str) -> dict[str, object]:
    return json.loads((provider.root / "pools" / pool / "pool.json").read_text())


# -- starting -------------------------------------------------------------------------


def test_scale_pool_starts_process_vms_in_their_own_sessions(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    pool_spec = spec("p1", agent, out)
    provider.create_pool(pool_spec)
    assert provider.list_instances("p1") == []
    provider.scale_pool("p1", 3)
    instances = wait_states(provider, "p1", all_running(3))
    ids = [i.id for i in instances]
    assert ids == ["p1-0000", "p1-0001", "p1-0002"]
    assert all(i.exit_status is None and i.pool == "p1" for i in instances)
    assert all(i.tags[TAG_CLUSTER] == "p1" for i in instances)

    sessions = set()
    pids = []
    for instance_id in ids:
        pid = pid_file(out, instance_id)
        pids.append(pid)
        sid = os.getsid(pid)
        assert os.getpgid(pid) == sid  # the process group is the session's
        sessions.add(sid)
        instance_dir = provider.root / "pools" / "p1" / "instances" / instance_id
        args = (out / instance_id / "args").read_text().splitlines()
        assert args == [
            "-m",
            "azmanagers.agent",
            "worker",
            "--payload",
            f"{instance_dir}/payload.json.gz",
        ]
        assert boot.decode_payload((instance_dir / "payload.json.gz").read_bytes()) == {
            "pool": "p1"
        }
        script = instance_dir / procvm.BOOT_SCRIPT_NAME
        assert script.read_text() == boot.render(pool_spec.boot)
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
        env = (out / instance_id / "env").read_text().splitlines()
        assert f"AZMANAGERS_INSTANCE_ID={instance_id}" in env
        assert "AZMANAGERS_POOL=p1" in env
        assert f"HOME={instance_dir}" in env
    assert len(sessions) == 3
    assert os.getsid(0) not in sessions
    assert os.getpgid(0) not in sessions

    provider.scale_pool("p1", 3)  # already there: starts nothing
    assert [i.id for i in provider.list_instances("p1")] == ids
    assert pool_meta(provider, "p1")["capacity"] == 3

    provider.delete_pool("p1", wait=True)
    assert provider.list_instances("p1") == []
    assert not (provider.root / "pools" / "p1").exists()
    assert all(gone(pid) for pid in pids)
    provider.delete_pool("p1", wait=True)  # deleting what is gone is no error


def test_create_pool_is_idempotent(provider: LocalProvider, agent: Path, out: Path) -> None:
    provider.create_pool(spec("same", agent, out, max_instances=2))
    provider.create_pool(spec("same", agent, out, max_instances=9))
    assert pool_meta(provider, "same")["max_instances"] == 2


@pytest.mark.parametrize(
    ("status", "state"),
    [(0, InstanceState.STOPPED), (3, InstanceState.FAILED), (255, InstanceState.FAILED)],
)
def test_a_finished_boot_script_is_stopped_or_failed_with_its_exit_status(
    provider: LocalProvider, agent: Path, out: Path, status: int, state: InstanceState
) -> None:
    provider.create_pool(spec("ex", agent, out, AZM_TEST_MODE="exit", AZM_TEST_STATUS=str(status)))
    provider.scale_pool("ex", 1)
    (instance,) = wait_states(
        provider,
        "ex",
        lambda insts: len(insts) == 1 and insts[0].state is not InstanceState.RUNNING,
    )
    assert instance.state is state
    assert instance.exit_status == status
    assert "agent ex-0000 says hello" in provider.instance_log("ex", "ex-0000")
    (log,) = provider.root.rglob("ex-0000/boot.log")
    assert log.stat().st_mode & 0o777 == 0o600  # what a VM's programs print is the owner's


def test_a_missing_interpreter_fails_the_boot_and_the_log_says_why(
    provider: LocalProvider, agent: Path, out: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-python"
    pool_spec = spec("miss", agent, out)
    pool_spec = PoolSpec(
        name="miss",
        boot=BootSpec(role="worker", payload={}, env={"AZMANAGERS_PYTHON": str(missing)}),
        tags=pool_spec.tags,
    )
    provider.create_pool(pool_spec)
    provider.scale_pool("miss", 1)
    (instance,) = wait_states(
        provider, "miss", lambda insts: len(insts) == 1 and insts[0].state is InstanceState.FAILED
    )
    assert instance.exit_status == 127
    log = provider.instance_log("miss", "miss-0000")
    assert "azmanagers: boot" in log
    assert str(missing) in log


# -- deleting -------------------------------------------------------------------------


def test_delete_instances_kills_the_whole_group_and_keeps_the_log(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("del", agent, out, AZM_TEST_STUBBORN="del-0000"))
    provider.scale_pool("del", 2)
    wait_states(provider, "del", all_running(2))
    agent_pid = pid_file(out, "del-0000")
    child_pid = pid_file(out, "del-0000", "child")  # ignores SIGTERM: needs the SIGKILL
    other_pid = pid_file(out, "del-0001")
    assert os.getsid(child_pid) == os.getsid(agent_pid)

    provider.delete_instances("del", ["del-0000"])
    states = {i.id: i.state for i in provider.list_instances("del")}
    assert states["del-0000"] is InstanceState.DELETING
    assert pool_meta(provider, "del")["capacity"] == 1

    provider.wait_deleted()
    assert gone(agent_pid)
    assert gone(child_pid)
    assert not gone(other_pid)
    assert [(i.id, i.state) for i in provider.list_instances("del")] == [
        ("del-0001", InstanceState.RUNNING)
    ]
    log = provider.instance_log("del", "del-0000")
    assert "agent del-0000 says hello" in log
    assert "azmanagers: starting agent with" in log
    assert provider.instance_log("del", "del-0000", tail_bytes=6) == log[-6:]
    assert provider.instance_log("del", "no-such-instance") == ""

    provider.delete_instances("del", ["del-0000", "no-such-instance"])  # repeat: no error
    assert pool_meta(provider, "del")["capacity"] == 1

    provider.scale_pool("del", 2)  # a new instance gets a new name
    wait_states(provider, "del", all_running(2))
    assert [i.id for i in provider.list_instances("del")] == ["del-0001", "del-0002"]


def test_scale_pool_down_removes_the_newest(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("down", agent, out))
    provider.scale_pool("down", 3)
    wait_states(provider, "down", all_running(3))
    provider.scale_pool("down", 1)
    states = {i.id: i.state for i in provider.list_instances("down")}
    assert states.pop("down-0000") is InstanceState.RUNNING
    # the two newest are deleting (or, when quick, already gone)
    assert set(states) <= {"down-0001", "down-0002"}
    assert all(state is InstanceState.DELETING for state in states.values())
    assert pool_meta(provider, "down")["capacity"] == 1
    provider.wait_deleted()
    assert [i.id for i in provider.list_instances("down")] == ["down-0000"]


def test_max_instances_and_bad_capacities_raise(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("cap", agent, out, max_instances=2))
    with pytest.raises(ProviderError, match=r"limited to 2 instances .*max_instances"):
        provider.scale_pool("cap", 3)
    with pytest.raises(ProviderError, match=">= 0"):
        provider.scale_pool("cap", -1)
    assert provider.list_instances("cap") == []
    assert pool_meta(provider, "cap")["capacity"] == 0
    with pytest.raises(ProviderError, match="does not exist"):
        provider.scale_pool("nope", 1)
    with pytest.raises(ProviderError, match="does not exist"):
        provider.delete_instances("nope", ["x"])
    assert provider.list_instances("nope") == []


def test_delete_pool_without_wait_still_deletes_the_pool(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("nowait", agent, out))
    provider.delete_pool("nowait", wait=False)
    provider.wait_deleted()
    assert provider.list_owned_resources(cluster="nowait") == []


# -- what an instance sees ------------------------------------------------------------


def test_the_callers_secrets_do_not_reach_an_instance(
    provider: LocalProvider, agent: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_not_for_vms")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    provider.create_pool(spec("env", agent, out))
    provider.scale_pool("env", 1)
    pid_file(out, "env-0000")
    text = (out / "env-0000" / "env").read_text()
    for leaked in ("AZURE_CLIENT_SECRET", "s3cr3t-value", "GITHUB_TOKEN", "SSH_AUTH_SOCK"):
        assert leaked not in text
    assert f"AZMANAGERS_PYTHON={agent}" in text.splitlines()  # the spec's env wins
    assert f"PATH={os.environ['PATH']}" in text.splitlines()


def test_instance_environment_is_clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.delenv("LANG", raising=False)
    env = procvm.instance_environment(tmp_path, {"EXTRA": "1", "HOME": "/override"})
    assert "AZURE_CLIENT_SECRET" not in env
    assert set(env) <= {
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "SYSTEMROOT",
        "HOME",
        "TMPDIR",
        "AZMANAGERS_INSTANCE_DIR",
        "AZMANAGERS_PYTHON",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        "EXTRA",
    }
    assert env["LANG"] == "C.UTF-8"
    assert env["HOME"] == "/override"
    assert env["AZMANAGERS_INSTANCE_DIR"] == str(tmp_path)
    assert Path(env["TMPDIR"]).is_dir()
    assert stat.S_IMODE(Path(env["TMPDIR"]).stat().st_mode) == 0o700
    assert (Path(env["PYTHONPATH"]) / "azmanagers" / "__init__.py").is_file()


def test_exit_status_and_tail_helpers(tmp_path: Path) -> None:
    assert procvm.exit_status(tmp_path) is None
    (tmp_path / procvm.EXIT_STATUS_NAME).write_text("garbage\n")
    assert procvm.exit_status(tmp_path) is None
    (tmp_path / procvm.EXIT_STATUS_NAME).write_text("42\n")
    assert procvm.exit_status(tmp_path) == 42
    assert procvm.tail(tmp_path / "missing.log", 10) == ""
    log = tmp_path / "boot.log"
    log.write_bytes(b"0123456789\xff")
    assert procvm.tail(log, 3) == "89\ufffd"
    assert procvm.tail(log, 1000) == "0123456789\ufffd"


# -- ownership and gc -----------------------------------------------------------------


def test_owned_resources_match_the_cluster_tag_exactly(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("pool-abc", agent, out, cluster="abc"))
    provider.create_pool(spec("pool-abcd", agent, out, cluster="abcd"))
    untagged = PoolSpec(name="foreign", boot=BootSpec(role="worker", payload={}), tags={})
    provider.create_pool(untagged)
    assert [r.name for r in provider.list_owned_resources(cluster="abc")] == ["pool-abc"]
    assert [r.name for r in provider.list_owned_resources(cluster="abcd")] == ["pool-abcd"]
    assert provider.list_owned_resources(cluster="ab") == []
    assert provider.list_owned_resources(cluster="ABC") == []
    everything = provider.list_owned_resources()
    assert [r.name for r in everything] == ["pool-abc", "pool-abcd"]
    assert all(r.kind == "pool" and r.owner_alive for r in everything)


def test_owner_alive() -> None:
    assert owner_alive(owner_id())
    assert not owner_alive(DEAD_OWNER)
    me = psutil.Process()
    assert not owner_alive(
        f"{me.pid}:{me.create_time() + 100:.2f}@{os.uname().nodename}"
    )  # reused pid
    assert owner_alive("999999:1.00@some-other-host")  # not ours to judge
    for garbage in ("", "nonsense", f"x:y@{os.uname().nodename}", f"abc:1.0@{os.uname().nodename}"):
        assert not owner_alive(garbage)


def test_is_expired() -> None:
    assert is_expired({TAG_EXPIRES: str(int(time.time()) - 10)})
    assert not is_expired({TAG_EXPIRES: str(int(time.time()) + 3600)})
    assert is_expired({TAG_EXPIRES: "100"}, now=101.0)
    assert not is_expired({})
    assert not is_expired({TAG_EXPIRES: "soon"})


def test_gc_collects_dead_owners_and_expired_pools_only(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("orphan", agent, out, cluster="c-orphan", owner=DEAD_OWNER))
    provider.create_pool(spec("expired", agent, out, cluster="c-expired", ttl_s=-60))
    provider.create_pool(spec("alive", agent, out, cluster="c-alive"))
    provider.scale_pool("orphan", 1)
    provider.scale_pool("alive", 1)
    orphan_pid = pid_file(out, "orphan-0000")
    alive_pid = pid_file(out, "alive-0000")
    tags = {r.name: r.tags for r in provider.list_owned_resources()}
    assert tags["orphan"][TAG_OWNER] == DEAD_OWNER
    assert tags["alive"][TAG_OWNER] == owner_id()

    preview = gc(dry_run=True)
    assert {(c.name, c.cluster) for c in preview} == {
        ("orphan", "c-orphan"),
        ("expired", "c-expired"),
    }
    assert len(provider.list_owned_resources()) == 3
    assert not gone(orphan_pid)

    assert gc(cluster="c-orph") == []  # exact match only
    assert len(provider.list_owned_resources()) == 3

    collected = {c.name: c for c in gc()}
    assert set(collected) == {"orphan", "expired"}
    assert collected["orphan"].reason == "its owner process is gone"
    assert collected["expired"].reason == "its azmanagers-expires tag has passed"
    assert all(c.provider == "local" and c.kind == "pool" for c in collected.values())
    assert [r.name for r in provider.list_owned_resources()] == ["alive"]
    assert gone(orphan_pid)
    assert not gone(alive_pid)
    assert provider.list_instances("orphan") == []
    assert gc() == []


def test_a_failed_start_does_not_block_later_growth(
    provider: LocalProvider, agent: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider.create_pool(spec("flaky", agent, out))
    real_start = procvm.start
    calls = {"n": 0}

    def start_failing_once(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("no more process slots")
        return real_start(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(procvm, "start", start_failing_once)
    with pytest.raises(ProviderError, match="no more process slots"):
        provider.scale_pool("flaky", 2)
    monkeypatch.setattr(procvm, "start", real_start)
    provider.scale_pool("flaky", 2)  # a fresh index, no FileExistsError
    ids = sorted(i.id for i in provider.list_instances("flaky"))
    assert len(ids) == 2 and len(set(ids)) == 2


def test_a_pool_being_deleted_refuses_to_grow(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("going", agent, out))
    provider.scale_pool("going", 1)
    provider.delete_pool("going", wait=False)
    with pytest.raises(ProviderError):
        provider.scale_pool("going", 2)
    provider.wait_deleted()


def test_one_unreadable_record_does_not_hide_the_others(
    provider: LocalProvider, agent: Path, out: Path
) -> None:
    provider.create_pool(spec("good", agent, out, cluster="c-good"))
    pools = provider.root / "pools"
    bad = {
        "not-json": b"{ nope",
        "not-utf8": b'{"tags": {"azmanagers-cluster": "\xff"}}',
        "not-an-object": b"[1, 2]",
        "bad-tags": b'{"tags": ["azmanagers-cluster"]}',
    }
    folders = [pools / name for name in bad]
    for name, data in bad.items():
        (pools / name).mkdir()
        (pools / name / "pool.json").write_bytes(data)
    broken_vm = provider.root / "vms" / "broken-vm"
    broken_vm.mkdir(parents=True)
    (broken_vm / "vm.json").write_bytes(b"\x00\xff")
    folders.append(broken_vm)
    try:
        assert [r.name for r in provider.list_owned_resources()] == ["good"]
        assert [r.name for r in provider.list_owned_resources(cluster="c-good")] == ["good"]
        unreadable = {Path(u.path): u.reason for u in provider.list_unreadable_resources()}
        assert set(unreadable) == {f / "pool.json" for f in folders[:-1]} | {broken_vm / "vm.json"}
        for path, reason in unreadable.items():
            assert str(path) in reason  # the reason names the file
        assert (pools / "not-json" / "pool.json").read_bytes() == bad["not-json"]  # untouched
    finally:
        for folder in folders:
            shutil.rmtree(folder)
    assert provider.list_unreadable_resources() == []


def test_a_missing_pool_is_not_found(provider: LocalProvider) -> None:
    with pytest.raises(NotFoundError, match="'nothing-here' does not exist"):
        provider.scale_pool("nothing-here", 1)
    with pytest.raises(NotFoundError):
        provider.delete_instances("nothing-here", ["nothing-here-0000"])


def test_a_local_vm_deletes_itself_through_the_registry(
    provider: LocalProvider, tmp_path: Path
) -> None:
    # What agent.selfdelete does after a persist=False job: from outside the VM's processes
    # but with the VM's environment, get_provider("local").delete_vm(its name).
    pid_path = tmp_path / "deleter.pid"
    code = "from azmanagers.providers import get_provider as g; import os; " + (
        "g('local').delete_vm(os.environ['AZMANAGERS_INSTANCE_ID'])"
    )
    deleter = tmp_path / "self-deleting-python"
    deleter.write_text(
        f"#!/bin/bash\n{HAS_AZMANAGERS}"
        f'setsid env -u AZMANAGERS_INSTANCE_DIR {sys.executable} -c "{code}" '
        f">> {tmp_path}/deleter.log 2>&1 &\necho $! > {pid_path}\nexec sleep 600\n"
    )
    deleter.chmod(0o755)
    made = provider.create_vm(
        VMSpec(
            name="selfdel",
            boot=BootSpec(role="detached", payload={}, env={"AZMANAGERS_PYTHON": str(deleter)}),
            tags=resource_tags("selfdel", owner_id(), 3600),
        )
    )
    assert made.state is InstanceState.RUNNING
    try:
        wait_until("the VM deleted itself", lambda: provider.get_vm("selfdel") is None)
        assert not (provider.root / "vms" / "selfdel").exists()
        deleter_pid = int(pid_path.read_text())
        wait_until("the deleter exits", lambda: gone(deleter_pid))
    finally:
        provider.delete_vm("selfdel")
        if pid_path.exists():
            with contextlib.suppress(psutil.Error):
                psutil.Process(int(pid_path.read_text())).kill()
    assert "Error" not in (tmp_path / "deleter.log").read_text()


@pytest.mark.parametrize("name", ["vmé", "vm²", "", "a" * 65, "vm\n", "../x"])
def test_a_local_vm_name_is_ascii_letters_digits_dash_underscore(
    provider: LocalProvider, name: str
) -> None:
    with pytest.raises(ConfigError, match="letters, digits"):
        provider.vms.folder(name)
