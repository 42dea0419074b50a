"""Batch runs of real executables on real Dask workers (local provider, file:// storage)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import psutil
import pytest

from azmanagers import batch
from azmanagers.batch.packages import add_package
from azmanagers.errors import BatchError, ConfigError, IntegrityError
from azmanagers.storage import open_storage
from tests.conftest import command_line, eventually, processes_under

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0


def running(home: Path, *command: str) -> list[psutil.Process]:
    """The processes under ``home`` whose command line starts with ``command``."""
    return [p for p in processes_under(home) if command_line(p)[: len(command)] == list(command)]


def executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A model folder in the shape of the seed's notebooks: a tool, an input file, a table."""
    root = tmp_path / "study"
    executable(
        root / "bin" / "hydro",
        'if [ "${1:-}" = --version ]; then echo "hydro 8.2"; exit 0; fi\n'
        "mkdir -p output\n"
        'echo "run ${RUN_NO:-0} case ${CASE:-x} mode ${MODE:-none}" > output/result.txt\n'
        'cat "$1" >> output/result.txt\n'
        'echo "log of ${RUN_NO:-0}" > run.log\n'
        'echo "to stderr ${RUN_NO:-0}" >&2\n',
    )
    (root / "run.inp").write_text("input deck\n")
    return root


def test_a_model_prints_its_version_and_outputs_land_next_to_inputs(
    study: Path, tmp_path: Path
) -> None:
    storage = (tmp_path / "runs").as_uri()
    model = batch.Model(
        "hydro",
        command="./study/bin/hydro --version > version.txt; ./study/bin/hydro study/run.inp",
        inputs=[str(study)],
        env={"MODE": "historical"},
        outputs=[
            batch.Output("version.txt"),
            batch.Output("output/**"),
            batch.Output("*.log", when="always"),
        ],
    )
    job = batch.submit(model, name="hist", storage=storage, wait=True, timeout=DEADLINE_S)
    assert job.root == storage  # what attach and --storage take, not the job's own folder
    assert batch.attach("hist", storage=job.root).status().status == "succeeded"
    status = job.status()
    assert (status.status, status.counts.get("succeeded")) == ("succeeded", 1)
    (run,) = job.runs()
    assert run.exit_code == 0 and run.node
    assert {o.path for o in run.outputs} == {"version.txt", "output/result.txt", "run.log"}
    got = job.download(tmp_path / "got")
    folder = tmp_path / "got" / run.run_id
    assert (folder / "version.txt").read_text() == "hydro 8.2\n"
    assert "mode historical" in (folder / "output" / "result.txt").read_text()
    assert "input deck" in (folder / "output" / "result.txt").read_text()
    assert "to stderr" in job.logs(run.run_id, "stderr")
    assert folder / "_logs" / "stdout.txt" in got
    # outputs live in storage next to the staged inputs, with their hashes
    root = tmp_path / "runs" / "hist"
    assert (root / "job.json").exists() and (root / "inputs").is_dir()
    assert all(len(o.sha256) == 64 for o in run.outputs)
    # records altered (a worker's credential could write them): refused, nothing written
    key = f"runs/{run.run_id}/run.json"
    honest = job.storage.get_bytes(key)
    for bad in ("../../escaped.txt", "", ".", "../other-run/x", "a\0b", "/abs"):
        record = json.loads(honest)
        record["outputs"][0]["path"] = bad
        job.storage.put_bytes(key, json.dumps(record).encode())
        with pytest.raises(IntegrityError, match="altered"):
            job.download(tmp_path / "again")
        assert not (tmp_path / "again").exists(), bad
    record = json.loads(honest)
    record["outputs"][1]["path"] = record["outputs"][0]["path"]
    job.storage.put_bytes(key, json.dumps(record).encode())
    with pytest.raises(IntegrityError, match="two files"):
        job.download(tmp_path / "again")
    job.storage.put_bytes(key, honest)
    # a file where a folder goes, a folder where a file goes: named, before any fetch
    (tmp_path / "third" / run.run_id).mkdir(parents=True)
    (tmp_path / "third" / run.run_id / "output").write_text("in the way")
    with pytest.raises(ConfigError, match="is a file where the download needs a folder"):
        job.download(tmp_path / "third")
    assert sorted(p.name for p in (tmp_path / "third" / run.run_id).iterdir()) == ["output"]
    (tmp_path / "third" / run.run_id / "output").unlink()
    (tmp_path / "third" / run.run_id / "version.txt").mkdir()
    with pytest.raises(ConfigError, match="is a folder where the download puts a file"):
        job.download(tmp_path / "third", overwrite=True)


def test_a_sweep_varies_env_and_fetches_a_shared_input_once_per_node(
    study: Path, tmp_path: Path
) -> None:
    big = tmp_path / "tables" / "big.h5"
    big.parent.mkdir()
    big.write_bytes(os.urandom(4 * 1024 * 1024))
    model = batch.Model(
        "ptm",
        command='test -r big.h5 && echo "$RUN_NO $CASE $(wc -c < big.h5)" > out.txt',
        shared=[str(big)],
        outputs=[batch.Output("out.txt")],
    )
    sweep = model.sweep(batch.product(RUN_NO=range(6), CASE=["a", "b"]))
    job = batch.submit(
        sweep,
        name="ptm",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
        wait=True,
        timeout=DEADLINE_S,
    )
    assert job.status().counts == {"succeeded": 12, "pending": 0} or (
        job.status().counts.get("succeeded") == 12
    )
    runs = job.runs()
    assert len(runs) == 12 and {r.params["CASE"] for r in runs} == {"a", "b"}
    for r in runs:
        text = job.storage.get_bytes(r.outputs[0].key).decode()
        assert text == f"{r.params['RUN_NO']} {r.params['CASE']} {4 * 1024 * 1024}\n"
    assert job._local is not None
    fetches = job._local.driver.fetches
    assert set(fetches) and len(fetches) <= 2
    # one file (the shared input) per node, whatever the number of runs there
    assert all(n == 1 for n in fetches.values()), fetches


def test_a_failing_run_is_retried_then_fails_and_keeps_its_logs(tmp_path: Path) -> None:
    model = batch.Model(
        "flaky",
        command='echo "attempt $AZM_ATTEMPT"; echo "bad things" >&2; echo partial > part.txt; '
        "exit 3",
        outputs=[batch.Output("part.txt", when="failure"), batch.Output("never.txt")],
        retries=1,
    )
    job = batch.submit(
        model, name="flaky", storage=(tmp_path / "runs").as_uri(), wait=True, timeout=DEADLINE_S
    )
    assert job.status().status == "failed"
    (run,) = job.runs(state="failed")
    assert [a.number for a in run.attempts] == [1, 2]
    assert run.exit_code == 3
    assert job.logs(run.run_id) == "attempt 2\n"
    assert job.logs(run.run_id, attempt=1) == "attempt 1\n"
    assert "bad things" in job.logs(run.run_id, "stderr")
    assert [o.path for o in run.outputs] == ["part.txt"]


def test_a_timeout_kills_the_run_and_its_children(tmp_path: Path, azm_home: Path) -> None:
    model = batch.Model(
        "slow",
        command="echo started; sleep 300 & sleep 300; echo never",
        timeout="2s",
    )
    job = batch.submit(
        model, name="slow", storage=(tmp_path / "runs").as_uri(), wait=True, timeout=DEADLINE_S
    )
    (run,) = job.runs()
    assert run.status == "failed" and run.attempts[-1].reason == "timeout"
    assert job.logs(run.run_id) == "started\n"
    sleepers = [p for p in processes_under(azm_home) if "sleep" in " ".join(command_line(p))]
    assert sleepers == []


def test_cancel_kills_every_run_and_ends_cancelled(tmp_path: Path, azm_home: Path) -> None:
    model = batch.Model("long", command="echo up; sleep 300")
    job = batch.submit(
        model.sweep(batch.product(I=range(4))),
        name="long",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )
    eventually(
        lambda: len(running(azm_home, "sleep", "300")) == 2,
        "2 runs running",
    )
    job.cancel()
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "cancelled"
    assert all(r.status == "cancelled" for r in job.runs())
    # the two that were running kept their attempt and logs; the queued ones never started
    logs = sorted(job.logs(r.run_id) for r in job.runs() if r.attempts)
    assert logs[-2:] == ["up\n", "up\n"] and set(logs[:-2]) <= {""}
    eventually(
        lambda: not running(azm_home, "sleep", "300"),
        "no run left",
    )


def test_a_resubmitted_sweep_skips_what_succeeded_and_retry_reruns_failures(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "fixed"
    model = batch.Model(
        "resume",
        command=f'echo "$I" >> {tmp_path}/ran.txt; if [ "$I" = 2 ] && [ ! -e {flag} ]; '
        "then exit 1; fi",
    )
    sweep = model.sweep(batch.product(I=range(4)))
    storage = (tmp_path / "runs").as_uri()
    job = batch.submit(sweep, name="resume", storage=storage, wait=True, timeout=DEADLINE_S)
    assert job.status().counts.get("failed") == 1
    ran = (tmp_path / "ran.txt").read_text().split()
    assert sorted(ran) == ["0", "1", "2", "3"]
    again = batch.submit(sweep, name="resume", storage=storage, wait=True, timeout=DEADLINE_S)
    assert sorted((tmp_path / "ran.txt").read_text().split()) == ["0", "1", "2", "2", "3"]
    assert again.status().status == "failed"
    flag.touch()
    retried = batch.attach("resume", storage=storage).retry(
        failed=True, wait=True, timeout=DEADLINE_S
    )
    assert retried.status().status == "succeeded"
    assert sorted((tmp_path / "ran.txt").read_text().split()) == ["0", "1", "2", "2", "2", "3"]
    (run,) = [r for r in retried.runs() if r.params["I"] == "2"]
    assert [a.number for a in run.attempts] == [1, 2, 3]  # the history is kept
    assert [a.exit_code for a in run.attempts] == [1, 1, 0]


def test_a_job_name_used_with_another_model_is_refused(tmp_path: Path) -> None:
    storage = (tmp_path / "runs").as_uri()
    batch.submit(
        batch.Model("m", command="true"), name="one", storage=storage, wait=True, timeout=DEADLINE_S
    )
    with pytest.raises(ConfigError, match="different model"):
        batch.submit(batch.Model("m", command="false"), name="one", storage=storage)


def test_attach_from_another_process_sees_the_records(tmp_path: Path) -> None:
    storage = (tmp_path / "runs").as_uri()
    batch.submit(
        batch.Model("m", command="echo hi").sweep(batch.product(K=["x", "y"])),
        name="seen",
        storage=storage,
        wait=True,
        timeout=DEADLINE_S,
    )
    code = (
        "import json, sys; from azmanagers import batch\n"
        f"job = batch.attach('seen', storage={storage!r})\n"
        "print(json.dumps([job.status().status, sorted(r.params['K'] for r in job.runs()),"
        " job.logs(job.runs()[0].run_id)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == ["succeeded", ["x", "y"], "hi\n"]


def test_a_package_is_unpacked_once_and_on_path(tmp_path: Path) -> None:
    tool = executable(tmp_path / "pkg" / "dsm2-8.2" / "bin" / "dsm2", 'echo "dsm2 ran $1"\n')
    archive = tmp_path / "dsm2-8.2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tool.parents[1], arcname="dsm2-8.2")
    storage = (tmp_path / "runs").as_uri()
    add_package(open_storage(storage), "dsm2", "8.2", archive)
    model = batch.Model(
        "uses-pkg",
        command='dsm2 "$I" > out.txt; test -d "$AZ_BATCH_APP_PACKAGE_dsm2_8_2"',
        packages=[batch.Package("dsm2", "8.2")],
        outputs=[batch.Output("out.txt")],
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(3))),
        name="pkg",
        storage=storage,
        wait=True,
        timeout=DEADLINE_S,
    )
    assert job.status().status == "succeeded"
    texts = sorted(job.storage.get_bytes(r.outputs[0].key).decode() for r in job.runs())
    assert texts == ["dsm2 ran 0\n", "dsm2 ran 1\n", "dsm2 ran 2\n"]


def test_a_worker_killed_mid_run_requeues_the_run(tmp_path: Path, azm_home: Path) -> None:
    model = batch.Model(
        "victim",
        # run 0's first attempt sleeps until the test kills it (a busy machine may find it
        # late), every other attempt is short
        command='if [ "$I$AZM_ATTEMPT" = 01 ]; then sleep 300; else sleep 1; fi; '
        'echo "done $I" > out.txt',
        outputs=[batch.Output("out.txt")],
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(2))),
        name="victim",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )

    def running() -> list[psutil.Process]:
        return [p for p in processes_under(azm_home) if command_line(p)[:2] == ["sleep", "300"]]

    eventually(lambda: len(running()) >= 1, "a run sleeping")
    victim = running()[0]
    vm_dir = victim.environ()["AZMANAGERS_INSTANCE_DIR"]
    victim_run = victim.environ()["AZM_RUN_ID"]
    leader = [
        p
        for p in processes_under(azm_home)
        if p.environ().get("AZMANAGERS_INSTANCE_DIR") == vm_dir
        and "worker" in " ".join(command_line(p))
    ]
    for proc in leader:
        os.kill(proc.pid, signal.SIGKILL)
    victim.kill()
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "succeeded", job.runs()
    texts = sorted(job.storage.get_bytes(r.outputs[0].key).decode() for r in job.runs())
    assert texts == ["done 0\n", "done 1\n"]
    # the requeue is visible: a lost attempt, then a new one, no retry spent
    (requeued,) = [r for r in job.runs() if r.run_id == victim_run]
    assert requeued.requeues == 1
    assert [a.reason for a in requeued.attempts] == ["lost", "exit"]


def test_detach_drives_the_job_from_a_vm_after_the_caller_is_gone(tmp_path: Path) -> None:
    from azmanagers.detached.api import rmproc

    storage = (tmp_path / "runs").as_uri()
    code = (
        "from azmanagers import batch\n"
        "from azmanagers.batch.detach import submit_detached\n"
        "m = batch.Model('m', command='echo \"run $K\" > out.txt',\n"
        "                outputs=[batch.Output('out.txt')])\n"
        "job = submit_detached(m.sweep(batch.product(K=range(3))), name='away',\n"
        f"                      storage={storage!r})\n"
        "print(job.name)\n"
    )
    caller = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert caller.returncode == 0, caller.stderr
    job = batch.attach("away", storage=storage)
    driver = job.status().driver
    assert driver.startswith("detached:")
    vm_name = driver.removeprefix("detached:").split("/", 1)[0]
    try:
        status = job.wait(timeout=DEADLINE_S)
        assert status.status == "succeeded"
        texts = sorted(job.storage.get_bytes(r.outputs[0].key).decode() for r in job.runs())
        assert texts == ["run 0\n", "run 1\n", "run 2\n"]
    finally:
        with contextlib.suppress(Exception):
            rmproc(vm_name)


def test_an_eviction_notice_stops_the_run_keeps_its_logs_and_requeues_it(
    tmp_path: Path, azm_home: Path
) -> None:
    model = batch.Model(
        "spot",
        # run 0's first attempt ends only by the notice (a busy machine may find it sleeping
        # late), every other attempt is short
        command='echo "start $I on $AZM_NODE"; if [ "$I$AZM_ATTEMPT" = 01 ]; then sleep 300; '
        'else sleep 1; fi; echo "done $I" > out.txt',
        outputs=[batch.Output("out.txt")],
        retries=0,
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(2))),
        name="spot",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )

    def sleeping() -> list[psutil.Process]:
        return [p for p in processes_under(azm_home) if command_line(p)[:2] == ["sleep", "300"]]

    eventually(lambda: len(sleeping()) >= 1, "a run sleeping")
    victim = sleeping()[0]
    env = victim.environ()
    # what the agent does on a Preempt notice: flag the node, let runs store their logs,
    # then retire its worker
    node_dir = Path(env["HOME"]) / ".azm-batch"
    (node_dir / "evicting").write_text("1\n")
    eventually(lambda: not any((node_dir / "active").iterdir()), "the run stopped", 20)
    assert job._local is not None
    job._local.driver.client.retire_workers(names=[env["AZM_NODE"]], close_workers=True)
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "succeeded", job.runs()
    (run,) = [r for r in job.runs() if r.run_id == env["AZM_RUN_ID"]]
    assert 1 <= run.requeues <= 2 and run.attempts[0].reason == "lost"  # no bouncing
    assert run.attempts[-1].reason == "exit" and run.attempts[-1].exit_code == 0
    first = job.logs(run.run_id, attempt=run.attempts[0].number)
    assert first.startswith("start ") and not psutil.pid_exists(victim.pid)


def test_a_sweep_of_10000_runs_is_fed_in_bounded_chunks(tmp_path: Path) -> None:
    model = batch.Model("many", command="sleep 0.3")
    sweep = model.sweep(batch.product(I=range(10_000)))
    job = batch.submit(sweep, name="many", storage=(tmp_path / "runs").as_uri(), workers=2)
    assert job._local is not None
    driver = job._local.driver
    eventually(lambda: driver.counts["succeeded"] >= 6, "a few runs done")
    on_scheduler = driver.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    # bounded by what is in flight (plus results not yet released), never the sweep's size
    assert on_scheduler <= 2 * driver.pace.in_flight
    job.cancel()
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "cancelled" and status.total == 10_000
    assert len(job.runs()) < 100  # only the runs that started have records


def test_a_killed_caller_leaves_a_stopped_job_that_resumes_and_no_run_behind(
    tmp_path: Path, azm_home: Path
) -> None:
    storage = (tmp_path / "runs").as_uri()
    code = (
        "from azmanagers import batch\n"
        "m = batch.Model('m', command='echo \"$I\" >> " + str(tmp_path / "ran.txt") + "; '\n"
        "                'if [ ! -e " + str(tmp_path / "go") + " ]; then sleep 300; fi')\n"
        f"batch.submit(m.sweep(batch.product(I=range(2))), name='gone', storage={storage!r},\n"
        "             wait=True)\n"
    )
    env = {**os.environ, "AZMANAGERS_DEATH_TIMEOUT_S": "3"}
    caller = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    try:
        eventually(
            lambda: (
                len(
                    [
                        p
                        for p in processes_under(azm_home)
                        if command_line(p)[:2] == ["sleep", "300"]
                    ]
                )
                == 2
            ),
            "2 runs running",
        )
        eventually(
            lambda: len(batch.attach("gone", storage=storage).runs(state="running")) == 2,
            "2 running records",
        )
    finally:
        os.killpg(caller.pid, signal.SIGKILL)
        caller.wait()
    status = batch.attach("gone", storage=storage).status()
    assert status.status == "stopped" and "submit the job again" in status.message, (
        status,
        caller.pid,
        psutil.pid_exists(caller.pid),
    )
    assert status.counts.get("running") == 2  # what the records say, not the last counts
    # the workers lose their scheduler and end, and their runs with them
    eventually(
        lambda: not running(azm_home, "sleep", "300"),
        "the runs killed",
        60,
    )
    (tmp_path / "go").touch()
    model = batch.Model(
        "m",
        command=f'echo "$I" >> {tmp_path / "ran.txt"}; '
        f"if [ ! -e {tmp_path / 'go'} ]; then sleep 300; fi",
    )
    again = batch.submit(
        model.sweep(batch.product(I=range(2))),
        name="gone",
        storage=storage,
        wait=True,
        timeout=DEADLINE_S,
    )
    assert again.status().status == "succeeded"
    # the attempt that was in progress when the caller died keeps its number (and folder)
    assert sorted(a.number for r in again.runs() for a in r.attempts) == [2, 2]


def test_an_edited_input_is_a_different_job_and_same_dest_inputs_are_refused(
    tmp_path: Path,
) -> None:
    storage = (tmp_path / "runs").as_uri()
    data = tmp_path / "in.txt"
    data.write_text("v1\n")
    model = batch.Model("m", command="cat in.txt", inputs=[str(data)])
    batch.submit(model, name="edit", storage=storage, wait=True, timeout=DEADLINE_S)
    data.write_text("v2\n")
    with pytest.raises(ConfigError, match="input contents"):
        batch.submit(model, name="edit", storage=storage)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("a")
    (tmp_path / "b" / "x.txt").write_text("b")
    twice = batch.Model(
        "m", command="true", inputs=[str(tmp_path / "a" / "x.txt"), str(tmp_path / "b" / "x.txt")]
    )
    with pytest.raises(ConfigError, match=r"both land on 'x\.txt'"):
        batch.submit(twice, name="twice", storage=storage)
    # folders whose contents meet, and a file where a folder input has a folder
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "y.txt").write_text("y")
    (tmp_path / "sub").write_text("a file")
    for inputs, where in (
        ([f"{tmp_path / 'a'}/", f"{tmp_path / 'b'}/"], "x.txt"),
        ([f"{tmp_path / 'a'}/", str(tmp_path / "sub")], "sub"),
        ([str(tmp_path / "sub"), f"{tmp_path / 'a'}/"], "sub/y.txt"),
    ):
        meeting = batch.Model("m", command="true", inputs=inputs)
        with pytest.raises(ConfigError, match=f"both land on '{where}'"):
            batch.submit(meeting, name="meet", storage=storage)
    assert batch.jobs(storage)[0].name == "edit" and len(batch.jobs(storage)) == 1
    # a folder by name and another's contents do not meet
    both = batch.Model(
        "m", command="test -f a/x.txt -a -f x.txt", inputs=[str(tmp_path / "a"), f"{tmp_path}/b/"]
    )
    fine = batch.submit(both, name="fine", storage=storage, wait=True, timeout=DEADLINE_S)
    assert fine.status().status == "succeeded", fine.runs()


def test_a_second_driver_takes_over_and_the_first_stops(tmp_path: Path) -> None:
    from azmanagers.batch.api import resubmit

    storage = (tmp_path / "runs").as_uri()
    model = batch.Model("m", command="sleep 0.5")
    first = batch.submit(
        model.sweep(batch.product(I=range(24))), name="two", storage=storage, workers=2
    )
    assert first._local is not None
    eventually(lambda: first._local.driver.counts["running"] >= 1, "the first driver feeding")
    # a second driver (as if from another machine, when the first looked stale)
    record = first.record()
    first.store.write_job(
        dataclasses.replace(
            record, session="other", driver="elsewhere:1", updated_at=time.time() - 3600
        )
    )  # (written an hour ago: that other driver is gone too, so the job can be resumed)
    at_takeover = first._local.driver.submitted
    with pytest.raises(BatchError, match=r"taken over|driven by"):
        first.wait(timeout=DEADLINE_S)
    # it noticed within a record period and fed nothing more after that
    assert first._local.driver.submitted <= at_takeover + 10 < 24
    second = resubmit(
        batch.attach("two", storage=storage), only_failed=False, wait=True, timeout=DEADLINE_S
    )
    assert second.status().status == "succeeded"
