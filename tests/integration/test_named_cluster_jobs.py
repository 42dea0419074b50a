"""Jobs on a named cluster: batch runs with ``cluster=NAME``, and detached jobs on its head
(``detachat(cluster.head_vm(), ...)``) that keep it from autostopping while they run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import azmanagers
from azmanagers import batch
from azmanagers.named.refresh import refresh
from azmanagers.named.stop import stop_cluster
from tests.conftest import eventually

pytestmark = pytest.mark.integration


def test_a_job_on_the_head_runs_and_keeps_it_from_autostopping(azm_home: Path) -> None:
    name = "t-headjobs"
    cluster = azmanagers.start_cluster(name, nodes=1, autostop=6)
    try:
        head = cluster.head_vm()
        quick = azmanagers.detachat(head, lambda n: n * 2, 21)
        assert quick.result(timeout=60) == 42
        started = time.monotonic()
        slow = azmanagers.detachat(head, "import time\ntime.sleep(14)\nprint('slept')\n")
        # idle is counted from the last job: while this one runs, the head stays
        time.sleep(10)
        assert cluster.status().idle_s < 6, "a running job should keep the head busy"
        slow.wait(timeout=60)
        assert "slept" in slow.read()
        # then it is idle, and autostops (checked every 5 s)
        eventually(
            lambda: refresh(azmanagers.named_cluster(name).record).record.status == "stopped",
            "the head to autostop after its job",
            timeout=60,
        )
        assert time.monotonic() - started >= 14
    finally:
        if name in [r.name for r in azmanagers.named_clusters()]:
            stop_cluster(name)


def test_a_batch_sweep_runs_on_a_named_cluster_and_grows_it_to_its_workers(
    azm_home: Path, tmp_path: Path
) -> None:
    name = "t-batchjobs"
    azmanagers.start_cluster(name, nodes=1, wait=True, timeout=120)
    try:
        model = batch.Model(
            "square", command="echo $((N*N)) > out.txt", outputs=[batch.Output("out.txt")]
        )
        job = batch.submit(
            model.sweep(batch.product(N=range(1, 5))),
            name="squares",
            storage=(tmp_path / "runs").as_uri(),
            cluster=name,
            workers=2,
        )
        status = job.wait(timeout=120)
        assert status.status == "succeeded", job.runs()
        outputs = sorted(int(job.storage.get_bytes(r.outputs[0].key)) for r in job.runs())
        assert outputs == [1, 4, 9, 16]
        assert job.status().cluster == name
        # the named cluster was grown to the job's workers and outlives the job
        after = azmanagers.named_cluster(name).status()
        assert after.target == 2
    finally:
        stop_cluster(name)


def test_a_connected_client_keeps_the_cluster_from_autostopping(azm_home: Path) -> None:
    name = "t-clientkeeps"
    azmanagers.start_cluster(name, nodes=1, wait=True, timeout=120, autostop=4)
    try:
        client = azmanagers.connect(name, timeout=60)
        try:
            time.sleep(11)  # past the autostop, with checks every 5 s: a client holds it
            assert azmanagers.named_cluster(name).status().target == 1
            assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        finally:
            client.close()
        eventually(
            lambda: refresh(azmanagers.named_cluster(name).record).record.status == "stopped",
            "the cluster to autostop once its client left",
            timeout=60,
        )
    finally:
        if name in [r.name for r in azmanagers.named_clusters()]:
            stop_cluster(name)


@pytest.mark.skipif(__import__("shutil").which("mpiexec") is None, reason="no MPICH mpiexec")
def test_an_mpi_run_whose_driver_is_killed_ends_on_the_named_cluster(
    azm_home: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import command_line, processes_under

    name = "t-orphan"
    azmanagers.start_cluster(name, nodes=2, wait=True, timeout=120)
    driver = None
    try:
        script = tmp_path / "drive.py"
        script.write_text(
            "from azmanagers import batch\n"
            f"model = batch.MpiModel('o', command='mpiexec -n 2 sleep 300', nodes=2)\n"
            f"job = batch.submit(model, name='o', storage={(tmp_path / 'runs').as_uri()!r}, "
            f"cluster={name!r})\n"
            "job.wait(timeout=600)\n"
        )
        driver = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ))

        def sleeping() -> list[str]:
            found = [" ".join(command_line(p)) for p in processes_under(azm_home)]
            return [line for line in found if line.startswith("sleep 300")]

        eventually(lambda: len(sleeping()) == 2, "the run's two ranks", 90)
        os.kill(driver.pid, signal.SIGKILL)  # its client goes: the scheduler releases its tasks
        driver.wait(timeout=10)
        eventually(lambda: sleeping() == [], "the orphaned ranks to end with their driver", 30)
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        stop_cluster(name)
