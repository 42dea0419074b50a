"""A chunk of runs on a worker: each run's error is its own, and a chunk stops early when a run
is long, cancelled or evicted (the rest come back unstarted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from azmanagers.batch import processes, runner
from azmanagers.batch.processes import ACTIVE
from azmanagers.batch.runner import RunTask, execute_many
from azmanagers.config.paths import NODE_DIR_ENV, eviction_flag
from azmanagers.errors import StorageError
from azmanagers.storage.base import open_storage
from azmanagers.storage.local import LocalStorage


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[RunTask]:
    monkeypatch.setenv(NODE_DIR_ENV, str(tmp_path / "node"))
    monkeypatch.setattr(runner, "CHUNK_LONG_RUN_S", 60.0)  # a slow machine ends no chunk
    storage = open_storage((tmp_path / "store").as_uri())
    grant = storage.grant("job/", ttl_s=600, write=True)
    storage.close()
    marks = tmp_path / "marks"
    marks.mkdir()

    def task(run_id: str, command: str, session: str = "s") -> RunTask:
        return RunTask(
            job="job",
            session=session,
            run_id=run_id,
            attempt=1,
            command=f"touch {marks}/{run_id}; {command}",
            env=(),
            grant=grant,
            prefix="job/",
        )

    return [task(f"r{i}", "true") for i in range(3)] + [task("slow", "sleep 0.3")]


def started(tmp_path: Path) -> set[str]:
    return {p.name for p in (tmp_path / "marks").iterdir()}


def test_a_chunk_runs_each_of_its_runs_in_turn(tasks: list[RunTask], tmp_path: Path) -> None:
    results = execute_many(tuple(tasks[:3]))
    assert [r.run_id for r in results] == ["r0", "r1", "r2"]
    assert all(r.succeeded and r.stdout_key and r.stderr_key for r in results)
    assert started(tmp_path) == {"r0", "r1", "r2"}


def test_a_long_run_ends_the_chunk_and_the_rest_come_back_unstarted(
    tasks: list[RunTask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "CHUNK_LONG_RUN_S", 0.2)
    results = execute_many((tasks[3], tasks[0], tasks[1]))
    assert results[0].succeeded
    assert [r.reason for r in results[1:]] == ["deferred", "deferred"]
    assert all(r.exit_code is None and not r.stdout_key for r in results[1:])
    assert started(tmp_path) == {"slow"}


def test_an_error_outside_the_command_fails_that_run_only(
    tasks: list[RunTask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = runner.execute

    def broken_for_r1(task: RunTask) -> runner.RunResult:
        if task.run_id == "r1":
            raise RuntimeError("a bug in the runner")
        return real(task)

    monkeypatch.setattr(runner, "execute", broken_for_r1)
    results = execute_many(tuple(tasks[:3]))
    assert [r.reason for r in results] == ["exit", "error", "exit"]
    assert "a bug in the runner" in results[1].error
    assert started(tmp_path) == {"r0", "r2"}


def test_a_cancelled_session_starts_nothing_more(tasks: list[RunTask], tmp_path: Path) -> None:
    with ACTIVE.lock:
        ACTIVE.cancelled.add("s")
    try:
        results = execute_many(tuple(tasks[:3]))
    finally:
        with ACTIVE.lock:
            ACTIVE.cancelled.discard("s")
    assert [r.reason for r in results] == ["cancelled"] * 3
    assert started(tmp_path) == set()  # checked before staging, not only before the command


def test_an_eviction_notice_sends_the_whole_chunk_back_at_once(
    tasks: list[RunTask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "EVICTION_HOLD_S", 0.3)
    monkeypatch.setattr(processes, "EVICTION_HOLD_STEP_S", 0.05)
    eviction_flag().write_text("1\n")
    calls: list[str] = []
    real = processes.why_not_start

    def counted(session: str) -> str | None:
        calls.append(session)
        return real(session)

    monkeypatch.setattr(runner, "why_not_start", counted)
    results = execute_many(tuple(tasks[:3]))
    assert [r.reason for r in results] == ["evicted", "deferred", "deferred"]
    assert len(calls) == 1  # one hold for the chunk, not one per run
    assert started(tmp_path) == set()


def test_a_log_that_could_not_be_stored_is_not_in_the_result(
    tasks: list[RunTask], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put = LocalStorage.put_file

    def put_file(self: LocalStorage, path: Path, key: str) -> object:
        if key.endswith("stderr.txt"):
            raise StorageError("the storage refused it")
        return real_put(self, path, key)

    monkeypatch.setattr(LocalStorage, "put_file", put_file)
    (result,) = execute_many((tasks[0],))
    assert result.stdout_key and result.stderr_key == ""
    assert "log" in result.error
