"""Short runs go in chunks, long runs keep a ``running`` record: what the fast path keeps."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import psutil
import pytest

from azmanagers import batch
from azmanagers.batch.flights import SHORT_RUN_CHUNK, SHORT_RUN_FACTOR
from tests.conftest import command_line, eventually, processes_under

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0


def test_short_runs_go_in_chunks_and_each_keeps_its_own_record_logs_and_outputs(
    tmp_path: Path,
) -> None:
    model = batch.Model(
        "tiny",
        command='echo "out $I"; echo "err $I" >&2; echo "$I" > out.txt',
        outputs=[batch.Output("out.txt")],
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(60))),
        name="tiny",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
        wait=True,
        timeout=DEADLINE_S,
    )
    assert job.status().status == "succeeded"
    assert job._local is not None
    driver = job._local.driver
    # the runs were short: the window widened and runs went in chunks
    assert driver.pace.in_flight == driver.pace.base_in_flight * SHORT_RUN_FACTOR
    assert driver.pace.chunk == SHORT_RUN_CHUNK
    runs = job.runs()
    assert len(runs) == 60 and all(r.status == "succeeded" for r in runs)
    for r in runs:
        (attempt,) = r.attempts
        assert attempt.number == 1 and attempt.exit_code == 0 and r.ended >= r.started > 0
        i = r.params["I"]
        assert job.logs(r.run_id) == f"out {i}\n"
        assert job.logs(r.run_id, "stderr") == f"err {i}\n"
        assert job.storage.get_bytes(r.outputs[0].key) == f"{i}\n".encode()


def test_a_long_run_shows_running_in_its_record_before_it_ends(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    model = batch.Model("slow", command=f"while [ ! -e {flag} ]; do sleep 0.1; done; echo done")
    job = batch.submit(model, name="slow", storage=(tmp_path / "runs").as_uri(), workers=1)
    try:
        # written within a record period of its start, not only at its end
        eventually(lambda: [r.status for r in job.runs()] == ["running"], "a running record", 30)
        assert job.status().counts.get("running") == 1
    finally:
        flag.touch()
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "succeeded"
    (run,) = job.runs()
    assert run.status == "succeeded" and len(run.attempts) == 1
    assert job.logs(run.run_id) == "done\n"


def test_a_worker_killed_while_it_holds_chunks_requeues_their_runs(
    tmp_path: Path, azm_home: Path
) -> None:
    model = batch.Model(
        "chunky", command='sleep 0.05; echo "$I" > out.txt', outputs=[batch.Output("out.txt")]
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(400))),
        name="chunky",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )
    assert job._local is not None
    driver = job._local.driver
    eventually(lambda: driver.pace.chunk == SHORT_RUN_CHUNK, "runs going in chunks")
    vm_dirs: list[str] = []

    def a_run_sleeping() -> bool:
        for proc in processes_under(azm_home):
            with contextlib.suppress(psutil.Error):
                if command_line(proc)[:2] == ["sleep", "0.05"]:
                    vm_dirs.append(proc.environ()["AZMANAGERS_INSTANCE_DIR"])
                    return True
        return False

    eventually(a_run_sleeping, "a run sleeping")
    killed = 0
    for proc in processes_under(azm_home):
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if env.get("AZMANAGERS_INSTANCE_DIR") == vm_dirs[0] and "worker" in " ".join(
                command_line(proc)
            ):
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
    assert killed
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "succeeded", status
    runs = job.runs()
    assert len(runs) == 400 and all(r.status == "succeeded" for r in runs)
    assert sorted(int(job.storage.get_bytes(r.outputs[0].key)) for r in runs) == list(range(400))
    for r in runs:  # a run of a lost chunk: lost attempts, then one that succeeded
        assert [a.reason for a in r.attempts][-1] == "exit"
        assert all(a.reason == "lost" for a in r.attempts[:-1])
        assert [a.number for a in r.attempts] == list(range(1, len(r.attempts) + 1))
        assert r.requeues == len(r.attempts) - 1  # every requeue is counted


def test_a_cancel_while_short_runs_go_in_chunks_ends_every_run(
    tmp_path: Path, azm_home: Path
) -> None:
    done = tmp_path / "done"
    done.mkdir()
    gate = tmp_path / "gate"  # once it exists, runs linger: the cancel always finds some running
    model = batch.Model(
        "many", command=f'sleep 0.05 && touch "{done}/$I"; if [ -e "{gate}" ]; then sleep 30; fi'
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(2000))),
        name="many",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )
    assert job._local is not None
    driver = job._local.driver
    eventually(lambda: driver.pace.chunk == SHORT_RUN_CHUNK, "runs going in chunks")
    gate.touch()
    eventually(
        lambda: any(command_line(p)[:2] == ["sleep", "30"] for p in processes_under(azm_home)),
        "a run lingering",
    )
    job.cancel()
    status = job.wait(timeout=DEADLINE_S)
    assert status.status == "cancelled"
    runs = job.runs()
    assert 0 < len(runs) < 2000
    assert {r.status for r in runs} <= {"succeeded", "cancelled"}
    assert "cancelled" in {r.status for r in runs}
    finished = {p.name for p in done.iterdir()}
    for r in runs:
        if r.status == "succeeded":
            assert r.params["I"] in finished
        elif r.params["I"] in finished:  # it did its work: only a kill after it may say so
            assert [a.reason for a in r.attempts][-1:] == ["cancelled"], r
            assert r.attempts[-1].exit_code not in (None, 0), r
    # a run that did its work and ended before the cancel keeps its success
    assert sum(r.status == "succeeded" for r in runs) >= len(finished) - 2
    eventually(
        lambda: not [p for p in processes_under(azm_home) if command_line(p)[:1] == ["sleep"]],
        "no run left",
        30,
    )
