"""``azm batch`` as a user runs it: real local workers, real shell models, file:// storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from azmanagers.cli import main
from tests.conftest import eventually

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0
BATCH_COMMANDS = [
    ["batch"],
    ["batch", "run"],
    ["batch", "status"],
    ["batch", "runs"],
    ["batch", "logs"],
    ["batch", "download"],
    ["batch", "retry"],
    ["batch", "cancel"],
    ["batch", "list"],
    ["batch", "package"],
    ["batch", "package", "add"],
    ["batch", "package", "list"],
]


def azm(*args: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    """The installed command in a subprocess (it inherits the test's AZMANAGERS_HOME)."""
    return subprocess.run(
        [sys.executable, "-m", "azmanagers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
        check=False,
    )


@pytest.fixture
def run_azm(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``azm`` in this process (faster than a subprocess): exit code, stdout, stderr."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return (tmp_path / "runs").as_uri()


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Background ``azm`` processes, killed (their whole group) if a test leaves them."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def background(procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        start_new_session=True,
    )
    procs.append(proc)
    return proc


@pytest.mark.parametrize("command", BATCH_COMMANDS, ids=" ".join)
def test_every_batch_command_has_help(command: list[str]) -> None:
    assert main([*command, "--help"]) == 0


def test_a_one_line_sweep_runs_and_its_outputs_download(
    tmp_path: Path,
    storage: str,
    run_azm: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table.txt").write_text("shared table\n")
    (tmp_path / "deck.inp").write_text("deck\n")
    result = azm(
        "batch", "run", "--name", "squares",
        "--command", 'echo "$((N * N)) $MODE $(cat deck.inp)" > out.txt; cat table.txt >> out.txt;'
        ' echo "hello $N"; echo "warn $N" >&2',
        "--input", "deck.inp", "--shared", "table.txt", "--env", "MODE=wet",
        "--sweep", "N=1..3", "--output", "out.txt", "--output", "*.none:always",
        "--storage", storage, "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RUN", "PARAMETERS", "STATUS", "EXIT", "DURATION", "NODE"]
    rows = [line.split() for line in lines[1:4]]
    assert sorted(r[1] for r in rows) == ["N=1", "N=2", "N=3"]
    assert all(r[2:4] == ["succeeded", "0"] for r in rows), lines
    assert lines[-1].startswith("job squares succeeded: succeeded 3")

    code, out, err = run_azm("batch", "download", "squares", str(tmp_path / "got"),
                             "--storage", storage)  # fmt: skip
    assert code == 0 and out.startswith("9 files downloaded"), err
    by_n = {r[1]: r[0] for r in rows}
    for n in (1, 2, 3):
        folder = tmp_path / "got" / by_n[f"N={n}"]
        assert (folder / "out.txt").read_text() == f"{n * n} wet deck\nshared table\n"
        assert (folder / "_logs" / "stdout.txt").read_text() == f"hello {n}\n"
    # again: what is there is kept; a file you changed is not replaced unless --overwrite
    mine = tmp_path / "got" / by_n["N=2"] / "out.txt"
    mine.write_text("my edit\n")
    code, out, err = run_azm("batch", "download", "squares", str(tmp_path / "got"),
                             "--storage", storage)  # fmt: skip
    assert code == 2 and "differ" in err and str(mine) in err and "--overwrite" in err, err
    assert mine.read_text() == "my edit\n"
    code, out, err = run_azm("batch", "download", "squares", str(tmp_path / "got"),
                             "--storage", storage, "--overwrite")  # fmt: skip
    assert code == 0 and mine.read_text() == "4 wet deck\nshared table\n", err
    assert out.startswith("1 files downloaded") and "(8 already there, unchanged)" in out, out

    code, out, err = run_azm("batch", "status", "squares", "--storage", storage, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["status"] == "succeeded" and status["total"] == 3
    assert status["counts"]["succeeded"] == 3

    code, out, err = run_azm("batch", "runs", "squares", "--storage", storage, "--json")
    assert code == 0, err
    runs = json.loads(out)
    assert sorted(r["params"]["N"] for r in runs) == ["1", "2", "3"]
    assert all(r["exit_code"] == 0 and r["outputs"][0]["path"] == "out.txt" for r in runs)

    code, out, _ = run_azm("batch", "logs", "squares", by_n["N=2"], "--storage", storage)
    assert (code, out) == (0, "hello 2\n")
    code, out, _ = run_azm("batch", "logs", "squares", by_n["N=3"], "--stderr", "--follow",
                           "--storage", storage)  # fmt: skip
    assert (code, out) == (0, "warn 3\n")

    code, out, _ = run_azm("batch", "list", "--storage", storage, "--json")
    assert code == 0 and [j["name"] for j in json.loads(out)] == ["squares"]
    code, out, _ = run_azm("batch", "download", "squares", str(tmp_path / "one"), "--run",
                           by_n["N=1"], "--storage", storage, "--json")  # fmt: skip
    assert code == 0 and sorted(Path(p).name for p in json.loads(out)) == [
        "out.txt",
        "stderr.txt",
        "stdout.txt",
    ]


def test_a_yaml_spec_runs_with_json_output(
    tmp_path: Path, storage: str, run_azm: Callable[..., tuple[int, str, str]]
) -> None:
    study = tmp_path / "study"
    (study / "data").mkdir(parents=True)
    (study / "data" / "base.txt").write_text("base\n")
    spec = study / "job.yaml"
    spec.write_text(
        "name: spec-job\n"
        'command: mkdir -p out && echo "$CASE-$RUN_NO $(cat base.txt)" > out/r.txt\n'
        "inputs: [data/]\n"
        "sweep:\n"
        "  product: {CASE: [a, b], RUN_NO: '1..2'}\n"
        "outputs: ['out/**', {pattern: '*.log', when: always}]\n"
        "workers: 1\n"
        f"storage: {storage}\n"
    )
    code, out, err = run_azm("batch", "run", str(spec), "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert data["job"]["status"] == "succeeded" and data["job"]["total"] == 4
    got = {
        (r["params"]["CASE"], r["params"]["RUN_NO"]): r["outputs"][0]["path"] for r in data["runs"]
    }
    assert got == {(c, n): "out/r.txt" for c in "ab" for n in "12"}
    code, out, _ = run_azm("batch", "download", "spec-job", str(tmp_path / "got"),
                           "--storage", storage)  # fmt: skip
    texts = sorted(p.read_text() for p in (tmp_path / "got").glob("*/out/r.txt"))
    assert texts == ["a-1 base\n", "a-2 base\n", "b-1 base\n", "b-2 base\n"]
    # the same spec again resumes: nothing runs again
    code, out, err = run_azm("batch", "run", str(spec), "--json")
    assert code == 0, err
    again = json.loads(out)
    assert {r["run_id"]: r["attempts"] for r in again["runs"]} == {
        r["run_id"]: r["attempts"] for r in data["runs"]
    }


def test_a_failing_run_exits_1_with_the_table_and_retry_runs_it_again(
    tmp_path: Path, storage: str, run_azm: Callable[..., tuple[int, str, str]]
) -> None:
    flag = tmp_path / "fixed"
    command = f'echo "try $N"; test "$N" != 2 || test -e {flag}'
    code, out, err = run_azm(
        "batch", "run", "--name", "flaky", "--command", command, "--sweep", "N=1,2,3",
        "--retries", "1", "--storage", storage, "--workers", "1",
    )  # fmt: skip
    assert code == 1, out + err
    table = {line.split()[1]: line.split() for line in out.splitlines()[1:4]}
    assert table["N=2"][2:4] == ["failed", "1"] and table["N=1"][2] == "succeeded"
    assert out.splitlines()[-1].startswith("job flaky failed: succeeded 2, failed 1")

    code, out, _ = run_azm("batch", "runs", "flaky", "--state", "failed", "--storage", storage,
                           "--json")  # fmt: skip
    (failed,) = json.loads(out)
    assert [a["exit_code"] for a in failed["attempts"]] == [1, 1]  # one retry spent
    code, out, _ = run_azm("batch", "logs", "flaky", failed["run_id"], "--follow",
                           "--storage", storage)  # fmt: skip
    assert out == "--- attempt 1 on {0} ---\ntry 2\n--- attempt 2 on {0} ---\ntry 2\n".format(
        failed["node"]
    )

    flag.touch()
    code, out, err = run_azm("batch", "retry", "flaky", "--failed", "--storage", storage,
                             "--workers", "1")  # fmt: skip
    assert code == 0, out + err
    assert out.splitlines()[-1].startswith("job flaky succeeded: succeeded 3")
    code, out, _ = run_azm("batch", "runs", "flaky", "--storage", storage, "--json")
    numbers = {r["params"]["N"]: [a["number"] for a in r["attempts"]] for r in json.loads(out)}
    assert numbers["1"] == numbers["3"] == [1]  # only the failure ran again,
    assert numbers["2"][-1] == 3  # as its third attempt


def test_a_package_is_added_listed_and_on_path(
    tmp_path: Path, storage: str, run_azm: Callable[..., tuple[int, str, str]]
) -> None:
    tool = tmp_path / "tool" / "bin" / "greet"
    tool.parent.mkdir(parents=True)
    tool.write_text('#!/usr/bin/env bash\necho "greetings from $1"\n')
    tool.chmod(0o755)
    code, out, err = run_azm("batch", "package", "add", "greet", "1.0", str(tmp_path / "tool"),
                             "--storage", storage)  # fmt: skip
    assert code == 0 and "package greet 1.0 registered" in out, err
    code, out, _ = run_azm("batch", "package", "list", "--storage", storage, "--json")
    (listed,) = json.loads(out)
    assert (listed["name"], listed["version"], len(listed["sha256"])) == ("greet", "1.0", 64)
    code, out, _ = run_azm("batch", "package", "list", "--storage", storage)
    assert out.splitlines()[1].split()[:2] == ["greet", "1.0"]
    # other content under the same version is refused (bad input: exit 2)
    tool.write_text("#!/usr/bin/env bash\necho changed\n")
    code, _, err = run_azm("batch", "package", "add", "greet", "1.0", str(tmp_path / "tool"),
                           "--storage", storage)  # fmt: skip
    assert code == 2 and "already registered with other content" in err

    code, out, err = run_azm(
        "batch", "run", "--name", "pkg", "--command", 'greet "$AZ_BATCH_TASK_ID"',
        "--package", "greet:1.0", "--storage", storage, "--workers", "1", "--json",
    )  # fmt: skip
    assert code == 0, out + err
    (run,) = json.loads(out)["runs"]
    code, out, _ = run_azm("batch", "logs", "pkg", run["run_id"], "--storage", storage)
    assert out == f"greetings from {run['run_id']}\n"


def _spec_with_typo(tmp_path: Path) -> str:
    spec = tmp_path / "typo.yaml"
    spec.write_text("name: t\ncomand: echo hi\n")
    return str(spec)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (lambda p: ["batch", "run", _spec_with_typo(p)], "Did you mean 'command'?"),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--env", "MODE"],
         "--env takes KEY=VALUE (e.g. MODE=historical), got 'MODE'"),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--storage", "s3://b/x"],
         "unknown scheme 's3://'"),
        (lambda p: ["batch", "list", "--storage", "gs://b"], "unknown scheme 'gs://'"),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--sweep", "N=1.."],
         "--sweep N=1..: "),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--output", "o:sucess"],
         "did you mean 'success'"),
        (lambda p: ["batch", "run", "--name", "x"], "needs --command"),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--wait", "--detach"],
         "--wait and --detach do not go together"),
        (lambda p: ["batch", "run", _spec_with_typo(p), "--command", "true"],
         "--command cannot be combined with a spec file"),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--package", "dsm2"],
         "--package takes NAME:VERSION"),
        (lambda p: ["batch", "run", "--name", "x", "--command", "true", "--input",
                    str(p / "missing.inp")], "missing.inp"),
    ],
    ids=["spec-key", "env", "scheme", "list-scheme", "sweep", "output", "command", "detach", "both",
         "package", "input"],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line_naming_it(
    args: Callable[[Path], list[str]],
    says: str,
    tmp_path: Path,
    storage: str,
    run_azm: Callable[..., tuple[int, str, str]],
) -> None:
    argv = args(tmp_path)
    if "--storage" not in argv and argv[1] == "run":
        argv += ["--storage", storage]
    code, out, err = run_azm(*argv)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], err
    assert not (tmp_path / "runs" / "x").exists()  # refused before anything was submitted


def test_a_missing_job_is_an_error_not_a_crash(
    storage: str, run_azm: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = run_azm("batch", "status", "nope", "--storage", storage)
    assert code == 1 and "no batch job 'nope'" in err and "azm batch list" in err
    code, out, _ = run_azm("batch", "list", "--storage", storage)
    assert code == 0 and out.startswith("no batch jobs in ")


def test_logs_follow_and_cancel_while_a_job_runs(
    tmp_path: Path, storage: str, started: list[subprocess.Popen[str]]
) -> None:
    from azmanagers.batch.sweep import run_id

    root = tmp_path / "runs" / "slow"
    runner = background(
        started, "batch", "run", "--name", "slow", "--command", 'echo "begun $N"; sleep 60',
        "--sweep", "N=1,2", "--storage", storage, "--workers", "1",
    )  # fmt: skip
    first = run_id({"N": "1"})
    eventually(
        lambda: (root / "runs" / first / "run.json").exists(),
        "run N=1 to start",
        timeout=DEADLINE_S,
        step_s=0.2,
    )
    follower = background(started, "batch", "logs", "slow", first, "--follow",
                          "--storage", storage)  # fmt: skip
    time.sleep(1.5)
    assert follower.poll() is None  # still following: the run has not ended
    result = azm("batch", "cancel", "slow", "--storage", storage)
    assert result.returncode == 0 and "cancel requested for job slow" in result.stdout
    out, err = runner.communicate(timeout=DEADLINE_S)
    assert runner.returncode == 1, out + err
    assert "cancelled" in out.splitlines()[-1] and "job slow cancelled" in out
    followed, ferr = follower.communicate(timeout=30)
    assert follower.returncode == 0, ferr  # --follow ends when the run is final
    # stdout is kept when a run is killed (the run record does not point at it yet: then
    # --follow has nothing to print)
    assert followed in ("", "begun 1\n")
    (kept,) = (root / "runs" / first).glob("attempt-1-*/stdout.txt")
    assert kept.read_text() == "begun 1\n"
    status = json.loads(azm("batch", "status", "slow", "--storage", storage, "--json").stdout)
    assert status["status"] == "cancelled"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_cancels_the_job_and_exits_130(
    tmp_path: Path, storage: str, started: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    from azmanagers.batch.sweep import run_id

    root = tmp_path / "runs" / "interrupted"
    runner = background(
        started, "batch", "run", "--name", "interrupted", "--command", "sleep 60",
        "--sweep", "N=1,2", "--storage", storage, "--workers", "1",
    )  # fmt: skip
    first = run_id({"N": "1"})
    eventually(
        lambda: (root / "runs" / first / "run.json").exists(),
        "run N=1 to start",
        timeout=DEADLINE_S,
        step_s=0.2,
    )
    runner.send_signal(sig)  # SIGTERM (timeout, systemd) is handled as Ctrl-C
    out, err = runner.communicate(timeout=60)  # far less than the runs' 60 s of sleep
    assert runner.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted: cancelling job interrupted" in err
    assert "job interrupted cancelled" in out  # what the cancel left, as after any run
    status = json.loads(
        azm("batch", "status", "interrupted", "--storage", storage, "--json").stdout
    )
    assert status["status"] == "cancelled", status


def test_detach_returns_at_once_and_status_follows_the_job(
    storage: str, run_azm: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = run_azm(
        "batch", "run", "--name", "away", "--command", 'echo "far $N"', "--sweep", "N=1,2",
        "--storage", storage, "--workers", "1", "--detach", "--json",
    )  # fmt: skip
    assert code == 0, out + err
    submitted = json.loads(out)
    assert submitted["driver"].startswith("detached:") and submitted["status"] != "succeeded"
    vm = submitted["driver"].removeprefix("detached:").split("/")[0]
    try:

        def ended() -> bool:
            _, text, _ = run_azm("batch", "status", "away", "--storage", storage, "--json")
            return bool(json.loads(text)["status"] in ("succeeded", "failed", "cancelled"))

        eventually(ended, "the detached job to end", timeout=90, step_s=0.2)
        code, out, _ = run_azm("batch", "status", "away", "--storage", storage, "--json")
        assert json.loads(out)["status"] == "succeeded"
        code, out, _ = run_azm("batch", "runs", "away", "--storage", storage, "--json")
        runs = json.loads(out)
        assert sorted(r["params"]["N"] for r in runs) == ["1", "2"]
        code, out, _ = run_azm("batch", "logs", "away", runs[0]["run_id"], "--storage", storage)
        assert out == f"far {runs[0]['params']['N']}\n"
    finally:
        run_azm("vm", "delete", vm)  # it deletes itself after the job; this is for a failure


def test_debug_logs_never_show_a_sas_signature(tmp_path: Path) -> None:
    import logging

    from azmanagers.cli import main

    main(["--debug", "batch", "list", "--storage", (tmp_path / "s").as_uri()])
    assert logging.getLogger("urllib3").getEffectiveLevel() >= logging.INFO


def test_logs_follow_of_a_run_that_is_not_in_the_job_ends_at_once(tmp_path: Path) -> None:
    from azmanagers import batch

    storage = (tmp_path / "s").as_uri()
    job = batch.submit(batch.Model("m", command="sleep 30"), name="busy", storage=storage)
    try:
        started = time.monotonic()
        code = main(["batch", "logs", "busy", "no-such-run", "--follow", "--storage", storage])
        assert code == 1 and time.monotonic() - started < 20
    finally:
        job.cancel()
        job.wait(timeout=DEADLINE_S)
