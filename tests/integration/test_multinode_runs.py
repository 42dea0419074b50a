"""Multi-node batch runs on real process-VMs: master/worker gangs and MPI across nodes (MPICH)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

from azmanagers import batch
from tests.conftest import command_line, eventually, processes_under

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mpiexec") is None, reason="MPICH's mpiexec is not installed"),
]
DEADLINE_S = 180.0
PY = sys.executable

MASTER = """
import os, socket, sys, time
expected = int(sys.argv[1])
server = socket.create_server((os.environ["AZM_HOST"], int(sys.argv[2])))
server.settimeout(60)
seen = []
while len(seen) < expected:
    conn, _ = server.accept()
    data = conn.recv(200).decode()  # empty: a worker's probe of the port (port_wait)
    if data:
        seen.append(data)
    conn.close()
open("connections.txt", "w").write("\\n".join(sorted(seen)) + "\\n")
print("master counted", len(seen))
"""
WORKER = """
import os, socket, time
host, port = os.environ["AZM_MASTER_HOST"], int(os.environ["AZM_MASTER_PORT"])
with socket.create_connection((host, port), timeout=30) as conn:
    conn.sendall(("%s %s" % (os.environ["AZ_BATCH_MASTER_NODE"], os.environ["AZM_NODE"])).encode())
print("worker connected to", host, port, flush=True)
time.sleep(300)  # stopped when the master ends
"""
ALLREDUCE = """
import json, os, sys, time
import psutil
from mpi4py import MPI
comm = MPI.COMM_WORLD
# the proxy that started this rank was started by its node's agent: its node is the rank's node
node = psutil.Process(os.getppid()).environ().get("AZMANAGERS_INSTANCE_DIR", "?")
if len(sys.argv) > 1:
    time.sleep(float(sys.argv[1]))
total = comm.allreduce(comm.Get_rank() + 1, op=MPI.SUM)
nodes = comm.gather(node, root=0)
if comm.Get_rank() == 0:
    json.dump({"sum": total, "size": comm.Get_size(), "nodes": nodes}, open("result.json", "w"))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def gang_processes(home: Path) -> list[str]:
    """The MPI and gang processes still running under ``home``."""
    names = ("mpiexec", "hydra_pmi_proxy", "allreduce.py", "worker.py", "master.py")
    found = []
    for proc in processes_under(home):
        line = " ".join(command_line(proc))
        if any(name in line for name in names):
            found.append(line)
    return found


def test_a_master_worker_job_starts_workers_with_the_masters_address(
    tmp_path: Path, azm_home: Path
) -> None:
    code = _write(tmp_path / "code", "master.py", MASTER)
    _write(code, "worker.py", WORKER)
    port = _free_port()
    gang = batch.MasterWorker(
        master=batch.Model(
            "counter",
            command=f"{PY} master.py 3 {port}",
            inputs=[f"{code}/"],
            outputs=["connections.txt"],
        ),
        worker=batch.Model(
            "helper", command=f"{PY} worker.py $AZM_MASTER_HOST", inputs=[f"{code}/"]
        ),
        workers=3,
        port=port,
    )
    job = batch.submit(gang, name="pest", storage=(tmp_path / "runs").as_uri(), workers=4)
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "succeeded", run
    text = job.storage.get_bytes(run.outputs[0].key).decode()
    lines = text.split()
    # three workers, each told the master's host and port
    assert len(text.splitlines()) == 3
    hosts = {line.split(":")[0] for line in lines[0::2]}
    assert len(hosts) == 1 and hosts.pop().startswith("127.")
    assert all(line.endswith(f":{port}") for line in lines[0::2])
    # the workers were stopped when the master ended, and their logs kept
    assert len(run.members) == 3
    assert all(m.reason == "cancelled" for m in run.members), run.members
    for member in run.members:
        assert b"worker connected to" in job.storage.get_bytes(member.stdout_key)
    assert gang_processes(azm_home) == []


def test_a_master_that_ends_before_its_workers_start_fails_the_run_clearly(
    tmp_path: Path, azm_home: Path
) -> None:
    gang = batch.MasterWorker(
        master=batch.Model("quick", command="exit 0"),
        worker=batch.Model("helper", command="echo $AZM_MASTER_HOST; sleep 30"),
        workers=2,
        port=_free_port(),
    )
    job = batch.submit(gang, name="quick", storage=(tmp_path / "runs").as_uri(), workers=3)
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "failed"
    assert "before any worker started" in run.error
    assert gang_processes(azm_home) == []


def _mpi_model(code: Path, **kwargs: object) -> batch.MpiModel:
    return batch.MpiModel(
        "allreduce",
        command=f"mpiexec -n 6 {PY} allreduce.py {kwargs.pop('sleep', '')}",
        inputs=[f"{code}/"],
        nodes=3,
        ranks_per_node=2,
        coordination='echo "coordinated on $AZM_NODE"',
        outputs=["result.json"],
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_mpi_run_spans_three_nodes_with_coordination_on_each(
    tmp_path: Path, azm_home: Path
) -> None:
    code = _write(tmp_path / "code", "allreduce.py", ALLREDUCE)
    job = batch.submit(
        _mpi_model(code), name="mpi", storage=(tmp_path / "runs").as_uri(), workers=3
    )
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "succeeded", run
    result = json.loads(job.storage.get_bytes(run.outputs[0].key))
    assert result["size"] == 6 and result["sum"] == sum(range(1, 7))
    assert len(set(result["nodes"])) == 3  # two ranks on each of three process-VMs
    assert sorted(result["nodes"].count(n) for n in set(result["nodes"])) == [2, 2, 2]
    # coordination ran on every node (its output is in each member's log)
    logs = [run.attempts[-1].stdout_key, *(m.stdout_key for m in run.members)]
    assert len(logs) == 3
    for key in logs:
        assert b"coordinated on" in job.storage.get_bytes(key)
    assert gang_processes(azm_home) == []


def test_a_node_killed_mid_run_requeues_the_gang_without_spending_a_retry(
    tmp_path: Path, azm_home: Path
) -> None:
    code = _write(tmp_path / "code", "allreduce.py", ALLREDUCE)
    model = _mpi_model(code, sleep='"$( [ $AZM_ATTEMPT = 1 ] && echo 300 || echo 0 )"')
    job = batch.submit(model, name="mpi-kill", storage=(tmp_path / "runs").as_uri(), workers=4)

    def proxies() -> list[psutil.Process]:
        found = processes_under(azm_home)
        return [p for p in found if any("hydra_pmi_proxy" in x for x in command_line(p)[:2])]

    def node_of(proc: psutil.Process) -> str:
        try:
            return str(proc.environ().get("AZMANAGERS_INSTANCE_DIR", ""))
        except psutil.Error:  # it ended meanwhile
            return ""

    eventually(lambda: len(proxies()) >= 3, "the gang's proxies running", 90)
    launchers = [p for p in processes_under(azm_home) if "mpiexec" in " ".join(command_line(p))]
    primary = node_of(launchers[0])
    victim_dir = next(node_of(p) for p in proxies() if node_of(p) not in ("", primary))
    for proc in processes_under(azm_home):
        if node_of(proc) == victim_dir:  # the node goes: every process of its VM
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    status = job.wait(timeout=DEADLINE_S * 2)
    (run,) = job.runs()
    assert status.status == "succeeded", run
    assert run.requeues >= 1 and run.attempts[0].reason == "lost", run.attempts
    result = json.loads(job.storage.get_bytes(run.outputs[0].key))
    assert result["sum"] == 21
    eventually(lambda: gang_processes(azm_home) == [], "no rank or proxy left", 30)


def test_cancelling_an_mpi_run_leaves_no_rank_proxy_or_mpiexec(
    tmp_path: Path, azm_home: Path
) -> None:
    code = _write(tmp_path / "code", "allreduce.py", ALLREDUCE)
    job = batch.submit(
        _mpi_model(code, sleep="300"),
        name="mpi-cancel",
        storage=(tmp_path / "runs").as_uri(),
        workers=3,
    )
    eventually(
        lambda: (
            sum("allreduce.py" in " ".join(command_line(p)) for p in processes_under(azm_home)) >= 6
        ),
        "six ranks running",
        90,
    )
    job.cancel()
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "cancelled"
    eventually(lambda: gang_processes(azm_home) == [], "no rank, proxy or mpiexec left", 30)


def test_a_sweep_of_two_mpi_runs(tmp_path: Path, azm_home: Path) -> None:
    code = _write(tmp_path / "code", "allreduce.py", ALLREDUCE)
    model = batch.MpiModel(
        "pair",
        command=f"{PY} allreduce.py",  # no mpiexec in it: azmanagers runs it under mpiexec
        inputs=[f"{code}/"],
        nodes=2,
        ranks_per_node=2,
        outputs=["result.json"],
    )
    job = batch.submit(
        model.sweep(batch.product(CASE=["wet", "dry"])),
        name="mpi-sweep",
        storage=(tmp_path / "runs").as_uri(),
        workers=4,
    )
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "succeeded", job.runs()
    for run in job.runs():
        result = json.loads(job.storage.get_bytes(run.outputs[0].key))
        assert result["size"] == 4 and result["sum"] == 10 and len(set(result["nodes"])) == 2
    assert gang_processes(azm_home) == []


def test_the_cli_runs_an_mpi_spec_and_shows_a_members_log(tmp_path: Path, azm_home: Path) -> None:
    import subprocess

    _write(tmp_path / "code", "allreduce.py", ALLREDUCE)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: mpi-cli\n"
        f"command: mpiexec -n 4 {PY} allreduce.py\n"
        "inputs: [code/]\n"
        "outputs: [result.json]\n"
        "mpi: {nodes: 2, ranks_per_node: 2, coordination: 'echo coordinated on $AZM_NODE'}\n"
    )
    storage = (tmp_path / "runs").as_uri()

    def azm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "azmanagers", *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            cwd=tmp_path,
        )

    ran = azm("batch", "run", str(spec), "--storage", storage, "--wait")
    assert ran.returncode == 0, ran.stderr
    (run,) = batch.attach("mpi-cli", storage=storage).runs()
    assert run.status == "succeeded" and len(run.members) == 1
    shown = azm("batch", "logs", "mpi-cli", run.run_id, "--member", "node-1", "--storage", storage)
    assert shown.returncode == 0 and "coordinated on" in shown.stdout, shown.stderr
    missing = azm(
        "batch", "logs", "mpi-cli", run.run_id, "--member", "worker-9", "--storage", storage
    )
    assert missing.returncode != 0 and "its members: node-1" in missing.stderr
    assert gang_processes(azm_home) == []


def test_too_few_nodes_is_said_before_anything_starts_or_after_a_bounded_wait(
    tmp_path: Path, azm_home: Path
) -> None:
    import azmanagers
    from azmanagers.errors import ConfigError

    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=120, max_instances=2)
    try:
        with pytest.raises(ConfigError, match=r"needs 3 nodes; cluster .* at most 2"):
            batch.submit(
                batch.MpiModel("big", command="true", nodes=3),
                name="big",
                storage=(tmp_path / "runs").as_uri(),
                cluster=cluster,
            )
        assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
        # two nodes may come (max 2) but only one is there: a bounded wait, then a clear error
        job = batch.submit(
            batch.MpiModel("pair", command="true", nodes=2, node_wait="3s"),
            name="pair",
            storage=(tmp_path / "runs").as_uri(),
            cluster=cluster,
        )
        status = job.wait(timeout=DEADLINE_S)
        (run,) = job.runs()
        assert status.status == "failed"
        assert "needs 2 whole nodes; the cluster had 1 worker(s), 1 of them free" in run.error
    finally:
        azmanagers.rmprocs()


COUNTER = """
import os, socket, sys
server = socket.create_server((os.environ["AZM_HOST"], int(sys.argv[1])))
server.settimeout(120)
seen = []
while len(seen) < int(sys.argv[2]):
    conn, _ = server.accept()
    data = conn.recv(200).decode()
    if data:
        seen.append(data)
    conn.close()
open("connections.txt", "w").write("\\n".join(seen) + "\\n")
"""


def _node_of(proc: psutil.Process) -> str:
    try:
        return str(proc.environ().get("AZMANAGERS_INSTANCE_DIR", ""))
    except psutil.Error:
        return ""


def _kill_node(home: Path, node: str) -> None:
    for proc in processes_under(home):
        if _node_of(proc) == node:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


def test_a_lost_worker_is_replaced_and_a_lost_master_requeues_the_gang(
    tmp_path: Path, azm_home: Path
) -> None:
    code = _write(tmp_path / "code", "master.py", COUNTER)
    _write(code, "worker.py", WORKER)
    port = _free_port()
    # the master ends after three connections: two workers, then the one replacing a lost one
    gang = batch.MasterWorker(
        master=batch.Model(
            "counter", command=f"{PY} master.py {port} 3", inputs=[f"{code}/"], outputs=["*.txt"]
        ),
        worker=batch.Model(
            "helper", command=f"{PY} worker.py $AZM_MASTER_HOST", inputs=[f"{code}/"]
        ),
        workers=2,
        port=port,
    )
    job = batch.submit(gang, name="replace", storage=(tmp_path / "runs").as_uri(), workers=4)

    def sleeping_workers() -> list[psutil.Process]:
        found = processes_under(azm_home)
        return [p for p in found if command_line(p)[1:2] == ["worker.py"]]

    eventually(lambda: len(sleeping_workers()) == 2, "two workers connected", 90)
    _kill_node(azm_home, _node_of(sleeping_workers()[0]))
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "succeeded", run
    assert sorted(m.reason for m in run.members) == ["cancelled", "cancelled", "lost"]
    assert len(job.storage.get_bytes(run.outputs[0].key).decode().split("\n")) == 4
    eventually(lambda: gang_processes(azm_home) == [], "no worker left", 30)

    # now the master's node goes: the whole gang is queued again, no retry spent. The first
    # attempt's master waits for a third connection that never comes, so it is up until its
    # node is killed (with two it could be done before the test saw it); the next needs two
    wanted = '$([ "$AZM_ATTEMPT" -gt 1 ] && echo 2 || echo 3)'
    gang = batch.MasterWorker(
        master=batch.Model(
            "counter",
            command=f"{PY} master.py {port} {wanted}",
            inputs=[f"{code}/"],
            outputs=["*.txt"],
        ),
        worker=gang.worker,
        workers=2,
        port=port,
    )
    job = batch.submit(gang, name="requeue", storage=(tmp_path / "runs").as_uri(), workers=4)

    def masters() -> list[psutil.Process]:
        return [p for p in processes_under(azm_home) if command_line(p)[1:2] == ["master.py"]]

    eventually(lambda: len(masters()) == 1, "the gang's master up", 90)
    _kill_node(azm_home, _node_of(masters()[0]))
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "succeeded", (run.attempts, run.members)
    assert run.requeues == 1 and run.attempts[0].reason == "lost", run.attempts
    eventually(lambda: gang_processes(azm_home) == [], "no worker left", 30)


def test_an_mpi_run_past_its_timeout_ends_everywhere(tmp_path: Path, azm_home: Path) -> None:
    code = _write(tmp_path / "code", "allreduce.py", ALLREDUCE)
    job = batch.submit(
        _mpi_model(code, sleep="300", timeout="8s"),
        name="mpi-timeout",
        storage=(tmp_path / "runs").as_uri(),
        workers=3,
    )
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "failed"
    assert run.attempts[-1].reason == "timeout", run.attempts
    eventually(lambda: gang_processes(azm_home) == [], "no rank, proxy or mpiexec left", 30)


def test_a_sweep_of_master_worker_runs_shares_a_small_cluster(
    tmp_path: Path, azm_home: Path
) -> None:
    code = _write(tmp_path / "code", "master.py", COUNTER)
    _write(code, "worker.py", WORKER)
    port = _free_port()
    gang = batch.MasterWorker(
        master=batch.Model("counter", command=f"{PY} master.py {port} 1", inputs=[f"{code}/"]),
        worker=batch.Model(
            "helper", command=f"{PY} worker.py $AZM_MASTER_HOST", inputs=[f"{code}/"]
        ),
        workers=1,
        port=port,
    )
    # three runs, each a master and a worker, on two workers: one gang at a time
    job = batch.submit(
        gang.sweep(batch.product(CASE=["a", "b", "c"])),
        name="pests",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "succeeded", job.runs()
    assert all(len(r.members) == 1 for r in job.runs())
    eventually(lambda: gang_processes(azm_home) == [], "no worker left", 30)


def test_a_coordination_failing_on_one_node_fails_the_run_and_names_the_node(
    tmp_path: Path, azm_home: Path
) -> None:
    model = batch.MpiModel(
        "picky",
        command="sleep 30",
        nodes=3,
        coordination='case "$AZM_NODE" in *-0001) echo "no scratch disk" >&2; exit 3;; esac',
    )
    job = batch.submit(model, name="picky", storage=(tmp_path / "runs").as_uri(), workers=3)
    status = job.wait(timeout=DEADLINE_S)
    (run,) = job.runs()
    assert status.status == "failed", run
    assert run.exit_code == 3 and "-0001: the coordination command failed (exit 3)" in run.error
    eventually(lambda: gang_processes(azm_home) == [], "nothing left", 30)
