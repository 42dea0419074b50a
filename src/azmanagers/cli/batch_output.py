"""The helpers of ``azm batch``: the model from options, progress, tables, logs, exit codes."""

from __future__ import annotations

import contextlib
import datetime
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from azmanagers.cli.options import echo_json
from azmanagers.errors import AzManagersError, ConfigError, StorageNotFoundError

LOG_CHUNK_BYTES = 1 << 20
"""Logs are copied to stdout in pieces of this size (a log of any size, in bounded memory)."""

if TYPE_CHECKING:
    from azmanagers.batch.driver import Progress as OnProgress
    from azmanagers.batch.job import Job, JobStatus
    from azmanagers.batch.model import Model, Package
    from azmanagers.batch.records import RunRecord
    from azmanagers.batch.sweep import Sweep

FAILED_EXIT = 1
"""Exit code of a job that ended with runs failed or cancelled."""
CANCEL_GRACE_S = 30.0
"""After Ctrl-C, how long ``azm batch run`` waits for its driver to kill the runs."""
MAX_TABLE_ROWS = 50
"""The final table of ``azm batch run`` shows at most this many runs (failures first)."""
PARAMS_WIDTH = 40
FOLLOW_POLL_S = 1.0
"""How often ``azm batch logs --follow`` reads the run's record."""
STATE_ORDER = ("pending", "staging", "running", "uploading", "succeeded", "failed", "cancelled")
_FINAL = frozenset({"succeeded", "failed", "cancelled"})


def when(stamp: float | None) -> str:
    """An epoch time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when unset)."""
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def counts_text(counts: Mapping[str, int]) -> str:
    """Counts by state in the order runs move through them, e.g. ``running 2, succeeded 4``."""
    order = [s for s in STATE_ORDER if counts.get(s)] + sorted(
        s for s in counts if s not in STATE_ORDER and counts[s]
    )
    return ", ".join(f"{s} {counts[s]}" for s in order) or "no runs yet"


def duration(seconds: float) -> str:
    """Seconds as ``0.4s``, ``12s``, ``3m05s`` or ``2h01m``."""
    if seconds <= 0:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _params(params: Mapping[str, str]) -> str:
    text = " ".join(f"{k}={v}" for k, v in params.items()) or "-"
    return text if len(text) <= PARAMS_WIDTH else text[: PARAMS_WIDTH - 3] + "..."


def print_runs(runs: Iterable[RunRecord], *, limit: int | None = None, hint: str = "") -> None:
    """A table of runs: run, parameters, status, exit code, duration, node.

    With ``limit``, runs that did not succeed come first and the rest is summed up in one
    line that ends with ``hint``.
    """
    rows = list(runs)
    if limit is not None and len(rows) > limit:
        rows.sort(key=lambda r: (r.status == "succeeded", r.run_id))
    shown = rows if limit is None else rows[:limit]
    width = max([len(r.run_id) for r in shown] + [3])
    typer.echo(
        f"{'RUN':<{width}}  {'PARAMETERS':<{PARAMS_WIDTH}}  {'STATUS':<10} {'EXIT':>4} "
        f"{'DURATION':>8}  NODE"
    )
    for r in shown:
        code = "-" if r.exit_code is None else str(r.exit_code)
        typer.echo(
            f"{r.run_id:<{width}}  {_params(r.params):<{PARAMS_WIDTH}}  {r.status:<10} "
            f"{code:>4} {duration(r.duration_s):>8}  {r.node or '-'}"
        )
    if len(rows) > len(shown):
        typer.echo(f"... and {len(rows) - len(shown)} more runs{hint}")


def print_status(status: JobStatus) -> None:
    """A job's status as ``key: value`` lines."""
    typer.echo(f"job:     {status.name}")
    typer.echo(f"url:     {status.url}")
    typer.echo(f"status:  {status.status}")
    typer.echo(f"runs:    {status.total} ({counts_text(status.counts)})")
    typer.echo(f"cluster: {status.cluster or '-'}")
    typer.echo(f"driver:  {status.driver or '-'}")
    typer.echo(f"created: {when(status.created)}   updated: {when(status.updated_at)}")
    if status.message:
        typer.echo(f"message: {status.message}")


def print_jobs(statuses: list[JobStatus]) -> None:
    """One line per job: name, status, runs and counts, when it was created."""
    width = max([len(s.name) for s in statuses] + [4])
    typer.echo(f"{'NAME':<{width}}  {'STATUS':<10} {'RUNS':>6}  {'CREATED':<19}  COUNTS")
    for s in statuses:
        typer.echo(
            f"{s.name:<{width}}  {s.status:<10} {s.total:>6}  {when(s.created):<19}  "
            f"{counts_text(s.counts)}"
        )


class ProgressDisplay:
    """A progress bar with counts per state, fed from the driver's thread or from ``wait``.

    Drawn on stderr (stdout stays for the table or the JSON); invisible when stderr is not a
    terminal or ``quiet``.
    """

    def __init__(self, title: str, *, quiet: bool = False) -> None:
        self.console = Console(stderr=True, quiet=quiet)
        self.title = title
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        self._bar.start()
        self._task = self._bar.add_task(self.title, total=None, counts="staging inputs")
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def note(self, text: str) -> None:
        """Replace the counts text (e.g. ``starting workers``) until the next update."""
        if self._task is not None:
            self._bar.update(self._task, counts=text)

    def counts(self, counts: Mapping[str, int], total: int) -> None:
        """The driver's ``progress(counts, total)`` callback."""
        if self._task is not None:
            done = sum(v for k, v in counts.items() if k in _FINAL)
            self._bar.update(self._task, completed=done, total=total, counts=counts_text(counts))

    def status(self, status: JobStatus) -> None:
        """``Job.wait``'s ``progress(status)`` callback."""
        self.counts(status.counts, status.total)


@contextmanager
def progress_display(title: str, *, quiet: bool) -> Iterator[ProgressDisplay]:
    """A ``ProgressDisplay`` started for the block and stopped after it, even on errors."""
    with ProgressDisplay(title, quiet=quiet) as display:
        yield display


def print_log(
    job: Job, run_id: str, stdio: str, attempt: int | None, member: str | None = None
) -> None:
    """Print one attempt's log (the last unless ``attempt``; a multi-node run's ``member``'s),
    streamed from a verified copy."""
    with tempfile.TemporaryDirectory(prefix="azm-log-") as tmp:
        path = job.log_file(run_id, Path(tmp) / "log", stdio, attempt=attempt, member=member)
        copy_to_stdout(path)


def copy_to_stdout(path: Path) -> None:
    """Copy a file of any size to stdout in LOG_CHUNK_BYTES pieces."""
    sys.stdout.flush()
    with open(path, "rb") as log:
        shutil.copyfileobj(log, sys.stdout.buffer, LOG_CHUNK_BYTES)
    sys.stdout.buffer.flush()


def follow_logs(
    job: Job, run_id: str, stdio: str, *, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Print a run's log as each attempt's log is kept, until the run is final (or Ctrl-C).

    Logs reach storage when an attempt ends, so each attempt's text appears then, under a
    ``--- attempt N on NODE ---`` line when the run has several attempts.
    """
    printed: set[str] = set()
    if job.store.read_run(run_id) is None and not job_has_run(job, run_id):
        job.run(run_id)  # raises: no such run in this job
    while True:
        record = job.store.read_run(run_id)
        if record is None:
            status = job.status()
            if status.done:
                job.run(run_id)  # raises: the job ended and this run never started
        else:
            attempts = [a for a in record.attempts if (a.stdout_key, a.stderr_key) != ("", "")]
            for attempt in attempts:
                key = attempt.stdout_key if stdio == "stdout" else attempt.stderr_key
                if not key or key in printed:
                    continue
                with tempfile.TemporaryDirectory(prefix="azm-log-") as tmp:
                    try:
                        job.storage.get_file(key, Path(tmp) / "log")
                    except StorageNotFoundError:
                        continue
                    printed.add(key)
                    if len(record.attempts) > 1 or attempt.number > 1:
                        typer.echo(f"--- attempt {attempt.number} on {attempt.node or '?'} ---")
                    copy_to_stdout(Path(tmp) / "log")
                sys.stdout.flush()
            if record.status in _FINAL:
                return
            status = job.status()
            if status.done:  # e.g. stopped: its driver went away, the run will not move
                typer.echo(f"(job {job.name} is {status.status}: {status.message})", err=True)
                return
        sleep(FOLLOW_POLL_S)


def job_has_run(job: Job, run_id: str) -> bool:
    """Whether ``run_id`` is one of the job's runs (from its definition)."""
    from azmanagers.batch.sweep import Sweep

    sweep = Sweep.from_dict(job.record().definition)
    return any(spec.run_id == run_id for spec in sweep.runs())


INTERRUPTED_EXIT = 130
"""The exit code after Ctrl-C (128 + SIGINT), as shells use."""


def submit_and_wait(
    start: Callable[[OnProgress], Job], name: str, *, json_out: bool
) -> tuple[Job, JobStatus]:
    """Start a job with a progress bar and wait for its end; on Ctrl-C cancel it first.

    ``start(progress)`` submits the job, passing ``progress`` on as the driver's callback.
    """
    with _terminate_as_interrupt(), progress_display(f"batch {name}", quiet=json_out) as display:
        try:
            job = start(display.counts)
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted before job {name} started: it is recorded stopped; submit it "
                "again to run it",
                err=True,
            )
            raise typer.Exit(INTERRUPTED_EXIT) from None
        try:
            return job, job.wait(progress=display.status)
        except KeyboardInterrupt:
            typer.echo(f"interrupted: cancelling job {name}", err=True)
            job.cancel()
            with contextlib.suppress(AzManagersError, KeyboardInterrupt):
                job.wait(CANCEL_GRACE_S)
    with contextlib.suppress(typer.Exit, AzManagersError):  # what the cancel left, then 130
        finish(job, job.status(), json_out=json_out)
    raise typer.Exit(INTERRUPTED_EXIT)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a job is driven from here, SIGTERM (``timeout``, systemd, ``kill``) is handled as
    Ctrl-C: the job is cancelled and its local cluster removed, not left for ``azm gc``."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def finish(job: Job, status: JobStatus, *, json_out: bool) -> None:
    """Print the job's final table (or JSON); exit 1 when the job did not succeed."""
    runs = job.runs()
    if json_out:
        echo_json({"job": status.to_dict(), "runs": runs})
    else:
        print_runs(runs, limit=MAX_TABLE_ROWS, hint=f"; `azm batch runs {job.name}` lists all")
        typer.echo(f"job {job.name} {status.status}: {counts_text(status.counts)} ({job.url})")
        if status.message:
            typer.echo(status.message)
    if status.status != "succeeded":
        raise typer.Exit(FAILED_EXIT)


def parse_pairs(values: list[str] | None, option: str, example: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a bad form or a repeated key is a ``ConfigError``."""
    pairs: dict[str, str] = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} takes KEY=VALUE (e.g. {example}), got {text!r}.")
        if key in pairs:
            raise ConfigError(f"{option} {key} is given twice; give each name once.")
        pairs[key] = value
    return pairs


def _packages(values: list[str] | None) -> list[Package]:
    from azmanagers.batch.model import Package

    found: list[Package] = []
    for text in values or []:
        name, sep, version = text.partition(":")
        if not sep or not name or not version:
            raise ConfigError(
                f"--package takes NAME:VERSION of a registered package (e.g. dsm2:8.2), got "
                f"{text!r}; register one with `azm batch package add NAME VERSION PATH`."
            )
        found.append(Package(name, version))
    return found


def one_line_model(
    name: str | None,
    command: str | None,
    *,
    inputs: list[str] | None,
    shared: list[str] | None,
    env: list[str] | None,
    sweep: list[str] | None,
    outputs: list[str] | None,
    packages: list[str] | None,
    retries: int,
    timeout: str | None,
) -> Model | Sweep:
    """The model (or sweep) of ``azm batch run --name N --command CMD ...``."""
    from azmanagers.batch.model import Model, Output
    from azmanagers.batch.sweep import parse_axis, product

    if not name:
        raise ConfigError("azm batch run needs a SPEC.yaml, or --name and --command.")
    if not command or not command.strip():
        raise ConfigError(
            f"azm batch run --name {name} needs --command (run by bash in each run's folder)."
        )
    model = Model(
        name,
        command=command,
        inputs=list(inputs or []),
        shared=list(shared or []),
        packages=_packages(packages),
        env=parse_pairs(env, "--env", "MODE=historical"),
        outputs=[Output.parse(o) for o in outputs or []],
        retries=retries,
        timeout=timeout,
    )
    axes = parse_pairs(sweep, "--sweep", "RUN_NO=1..100")
    if not axes:
        return model
    values: dict[str, list[str]] = {}
    for key, text in axes.items():
        try:
            values[key] = parse_axis(text)
        except ConfigError as exc:
            raise ConfigError(f"--sweep {key}={text}: {exc}") from None
    return model.sweep(product(**values))
