"""A cancel keeps what ended before it: a run still uploading its outputs finishes and stays
succeeded; runs that never ran are listed as pending."""

from __future__ import annotations

from pathlib import Path

import pytest

from azmanagers import batch
from azmanagers.errors import ConfigError
from tests.conftest import eventually

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0
OUTPUT_FILES = 3000


def test_a_cancel_lets_a_run_that_is_uploading_finish_and_lists_runs_never_run(
    tmp_path: Path,
) -> None:
    done = tmp_path / "done"
    done.mkdir()
    light = tmp_path / "light"  # once there, runs write one output (the retries are quick)
    model = batch.Model(
        "uploads",
        # many outputs: the upload takes a while after the command ended
        command=f'n={OUTPUT_FILES}; if [ -e "{light}" ]; then n=1; fi; '
        'mkdir o && for i in $(seq $n); do echo "$i" > o/$i; done; '
        f'touch "{done}/$I"',
        outputs=[batch.Output("o/**")],
    )
    job = batch.submit(
        model.sweep(batch.product(I=range(12))),
        name="uploads",
        storage=(tmp_path / "runs").as_uri(),
        workers=2,
    )
    eventually(lambda: any(done.iterdir()), "a run's command to end", DEADLINE_S)
    # from another handle, as another process would: the wait ends once every run is final
    attached = batch.attach("uploads", storage=(tmp_path / "runs").as_uri())
    attached.cancel()
    status = attached.wait(timeout=DEADLINE_S)
    assert status.status == "cancelled"
    assert not job.runs(state="running")
    finished = {p.name for p in done.iterdir()}
    runs = job.runs()
    assert finished and {r.status for r in runs} <= {"succeeded", "cancelled"}
    for r in runs:
        if r.params["I"] in finished and r.status != "succeeded":
            # only a kill in the instant between its last command and its exit may say so
            assert r.attempts and r.attempts[-1].reason == "cancelled", r
            assert r.attempts[-1].exit_code not in (None, 0), r
        if r.status == "succeeded":
            assert len(r.outputs) == OUTPUT_FILES and r.attempts[-1].exit_code == 0
            assert r.params["I"] in finished
    # the runs never handed out are pending, by the job's own definition
    pending = job.runs(state="pending")
    assert pending and all(p.status == "pending" and not p.attempts for p in pending)
    assert len(pending) + len(runs) == 12
    assert {p.run_id for p in pending}.isdisjoint(r.run_id for r in runs)
    light.touch()
    # retrying the failures leaves the runs never run: the job is incomplete, not failed
    again = job.retry(failed=True, wait=True, timeout=DEADLINE_S).status()
    assert again.status == "incomplete" and "--unfinished" in again.message, again
    assert len(job.runs(state="pending")) == len(pending)
    final = job.retry(failed=False, wait=True, timeout=DEADLINE_S).status()
    assert final.status == "succeeded" and final.counts.get("succeeded") == 12


def test_a_model_env_too_big_for_a_process_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"BIG.*input file"):
        batch.Model("m", command="true", env={"BIG": "a" * 140_000})
    with pytest.raises(ConfigError, match=r"command.*input file"):
        batch.Model("m", command="echo " + "a" * 140_000)
    with pytest.raises(ConfigError, match="env takes"):
        batch.Model("m", command="true", env={f"V{i}": "a" * 100_000 for i in range(12)})
    batch.Model("m", command="true", env={"FITS": "a" * 120_000})
    # once the parameters are substituted: refused when the sweep is expanded (at submission)
    grows = batch.Model("m", command="echo $BIG", env={"BIG": "{X}" * 40})
    with pytest.raises(ConfigError, match=r"env BIG of run .*input file"):
        list(grows.sweep(batch.listing([{"X": "a" * 4000}])).runs())
