"""A named cluster on the azure provider through the emulator: the head is an Azure VM (and
NIC) from templates that calls ARM with its own managed identity; stop leaves nothing tagged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import azmanagers
from azmanagers.emulator import Emulator
from azmanagers.named.refresh import refresh
from azmanagers.named.stop import stop_cluster
from azmanagers.providers.tags import TAG_CLUSTER
from tests.conftest import eventually, processes_under
from tests.emulator.conftest import save_vm_templates

pytestmark = pytest.mark.integration


def _save_head_templates() -> None:
    # the head calls ARM as itself: no caller credential on it
    save_vm_templates("headvm", nic="headnic", managed_identity=True)


def _tagged(emu: Emulator, name: str) -> list[str]:
    found = []
    for kind, table in (("vm", emu.state.vms), ("nic", emu.state.nics)):
        for key, item in table.items():
            body = item.get("body", item) if isinstance(item, dict) else {}
            if (body.get("tags") or {}).get(TAG_CLUSTER) == name:
                found.append(f"{kind} {key}")
    for key, scaleset in emu.state.scalesets.items():
        if (scaleset.body.get("tags") or {}).get(TAG_CLUSTER) == name:
            found.append(f"scaleset {key}")
    return found


def test_a_named_cluster_on_azure_runs_work_autostops_and_stop_leaves_nothing(
    emulated_azure: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save_head_templates()
    name = "emu-study"
    try:
        cluster = azmanagers.start_cluster(
            name,
            template="myscaleset",
            head_template="headvm",
            nodes=2,
            wait=True,
            timeout=180,
            autostop=10,
        )
        assert cluster.record.provider == "azure" and cluster.record.port == 8081
        # the head is an Azure VM whose disks and NIC go with it
        (head,) = [vm["body"] for vm in emulated_azure.state.vms.values()]
        storage = head["properties"]["storageProfile"]
        assert storage["osDisk"]["deleteOption"] == "Delete"
        assert head["identity"]["type"].lower() == "systemassigned"
        # the caller's ARM token is not in what the head booted with
        custom_data = head["properties"]["osProfile"]["customData"]
        assert emulated_azure.server.token not in custom_data
        client = azmanagers.connect(name, timeout=60)
        try:
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        finally:
            client.close()
        results = cluster.exec("echo ok")
        assert [r.stdout for r in results] == ["ok\n", "ok\n"]
        # nodes is answered by the head (no ARM call); list --refresh adds one tag listing. The
        # head's reconciler calls ARM too: count only this process's calls, by a user agent
        # that azure-core appends to every request made while it is set
        marker = f"azm-test-{os.getpid()}"
        monkeypatch.setenv("AZURE_HTTP_USER_AGENT", marker)

        def mine() -> int:
            return len([c for c in emulated_azure.server.calls if marker in c.user_agent])

        assert cluster.status().joined == 2
        assert mine() == 0
        refreshed = refresh(cluster.record)
        assert refreshed.status is not None and refreshed.notes == ()
        assert mine() == 1
        monkeypatch.delenv("AZURE_HTTP_USER_AGENT")
        assert cluster.ssh(node=results[0].node, command=["exit 3"]) == 3
        assert cluster.ssh(command=["test -d /proc && exit 4"]) == 4  # on the head
        assert _tagged(emulated_azure, name)
        # idle: the head deletes the pool, then itself with its own identity (through ARM)
        eventually(lambda: not _tagged(emulated_azure, name), "autostop", timeout=90)
        assert refresh(cluster.record).record.status == "stopped"
    finally:
        if name in [r.name for r in azmanagers.named_clusters()]:
            stop_cluster(name)
    assert _tagged(emulated_azure, name) == []
    assert not emulated_azure.state.scalesets and not emulated_azure.state.vms
    # the head's last processes (its self-delete) end on their own
    eventually(lambda: not processes_under(tmp_path / "emulator"), "the head's processes to end")


def test_on_azure_a_never_joining_node_is_replaced_setup_reruns_and_a_killed_head_is_seen(
    emulated_azure: Emulator, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from azmanagers.named.stop import providers_of
    from azmanagers.named.transfer import export_record

    _save_head_templates()
    name = "emu-faults"
    try:
        cluster = azmanagers.start_cluster(
            name,
            template="myscaleset",
            head_template="headvm",
            nodes=1,
            setup="echo set-up >> setup-runs\n",
            join_timeout_s=5,
            setup_timeout_s=5,  # a node's deadline to join is both: 10 s
        )
        # the next node never joins: the head deletes it at its deadline and replaces it
        emulated_azure.state.faults.update({"never_join": 1})
        cluster.resize(2)
        status = cluster.wait_for_nodes(2, timeout=120)
        assert status.joined == 2
        assert any("did not join within 10 s" in f for f in status.failures), status.failures
        only_new = cluster.setup(only_new=True)
        assert [r.skipped for r in only_new] == [True, True]
        again = cluster.setup()
        assert [r.exit_code for r in again] == [0, 0] and not any(r.skipped for r in again)
        runs = cluster.exec("cat setup-runs")
        assert [r.stdout for r in runs] == ["set-up\nset-up\n"] * 2
        cluster.resize(1)
        eventually(lambda: len(cluster.status().nodes) == 1, "the pool to shrink to 1", 60)
        # another machine (another AZMANAGERS_HOME) attaches through export and import
        exported = export_record(name, tmp_path / "emu-faults.json")
        code = (
            "import azmanagers\n"
            "from azmanagers.named.transfer import import_record\n"
            f"import_record({str(exported)!r})\n"
            f"c = azmanagers.connect({name!r}, timeout=60)\n"
            "print(c.submit(pow, 2, 10).result(timeout=60))\n"
            "c.close()\n"
        )
        env = {**os.environ, "AZMANAGERS_HOME": str(tmp_path / "other-home")}
        other = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
        )
        assert other.returncode == 0 and other.stdout.strip() == "1024", other.stderr[-2000:]
        # a head deleted by hand (az vm delete): refresh asks the cloud and says so
        providers_of(cluster.record)[1].delete_vm(cluster.record.head)
        refreshed = refresh(cluster.record)
        assert refreshed.record.status == "stopped", refreshed
        assert "is gone" in refreshed.record.reason and "still there" in refreshed.record.reason
    finally:
        if name in [r.name for r in azmanagers.named_clusters()]:
            stop_cluster(name)
    assert _tagged(emulated_azure, name) == []


def test_on_azure_a_start_killed_while_its_head_boots_is_finished_by_stop(
    emulated_azure: Emulator, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    _save_head_templates()
    name = "emu-crash"
    code = (
        "import azmanagers\n"
        f"azmanagers.start_cluster({name!r}, template='myscaleset', head_template='headvm',"
        " nodes=1, timeout=120)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    try:
        # killed once the head VM exists, before start returns
        eventually(lambda: bool(_tagged(emulated_azure, name)), "the head VM to exist", 60)
        os.kill(starter.pid, signal.SIGKILL)
    finally:
        starter.wait(timeout=30)
    record = azmanagers.named_cluster(name).record
    assert record.status in ("creating", "up")
    stop_cluster(name)
    assert _tagged(emulated_azure, name) == []
    assert name not in [r.name for r in azmanagers.named_clusters()]
