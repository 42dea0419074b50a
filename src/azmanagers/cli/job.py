"""The ``azm job`` commands: run scripts on detached VMs and follow them."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from azmanagers.cli.options import JsonOption, echo_json
from azmanagers.cli.vm import VmOption, _when
from azmanagers.detached.wire import MAX_JOB_NAME_CHARS
from azmanagers.errors import ConfigError

job_app = typer.Typer(
    name="job",
    help="Run scripts on detached VMs and follow them: run, list, status, logs, wait, kill.",
    no_args_is_help=True,
    add_completion=False,
)

JobArgument = Annotated[str, typer.Argument(help="The job id.", show_default=False)]


def _parse_env(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env takes KEY=VALUE, got {_shown(pair)!r}.")
        for part, what in ((key, "its name"), (value, "its value")):
            try:
                part.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(
                    f"--env {_shown(key)}: {what} is not UTF-8 text (byte "
                    f"{os.fsencode(part[exc.start : exc.end])[0]:#04x}); a job's environment "
                    "takes UTF-8 text. Check your shell's locale or the value's source."
                ) from None
        env[key] = value
    return env


def _shown(text: str) -> str:
    """Command-line text as it can be printed (undecodable bytes replaced)."""
    return os.fsencode(text).decode("utf-8", errors="replace")


def _job_name(script: Path) -> str:
    """A job name from a script's file name: undecodable bytes replaced, cut to fit."""
    name = _shown(script.name)
    if len(name) > MAX_JOB_NAME_CHARS:
        name = name[: MAX_JOB_NAME_CHARS - 3] + "..."
    return name


@job_app.command("run")
def job_run(
    script: Annotated[Path, typer.Argument(help="A Python script to run on the VM.")],
    vm: VmOption,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for the job; repeat for more.", show_default=False),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Stream its stdout.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Run a Python script on a detached VM; print the job id (or, with --follow, its output;
    with --json, its record)."""
    from azmanagers.detached.api import detachat

    if json_out and follow:
        raise ConfigError("--json and --follow do not go together: pick one.")
    try:
        code = script.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {_shown(str(script))}: {exc}") from None
    job = detachat(vm, code, env=_parse_env(env), job_name=_job_name(script))
    if json_out:
        echo_json(job.record())
        return
    typer.echo(job.id)
    if follow:
        _follow(vm, job.id, "stdout")


@job_app.command("list")
def job_list(vm: VmOption, json_out: JsonOption = False) -> None:
    """List the jobs of a detached VM, oldest first."""
    from azmanagers.detached.api import job_records

    jobs = job_records(vm)
    if json_out:
        echo_json(jobs)
        return
    if not jobs:
        typer.echo(f"no jobs on VM {vm}")
        return
    typer.echo(f"{'ID':<17} {'STATUS':<10} {'STARTED':<20} {'FINISHED':<20} NAME")
    for job in jobs:
        typer.echo(
            f"{job.id:<17} {job.status:<10} {_when(job.started_at):<20} "
            f"{_when(job.finished_at):<20} {job.name}"
        )


@job_app.command("status")
def job_status(job_id: JobArgument, vm: VmOption, json_out: JsonOption = False) -> None:
    """Show a job's status (and its error, if it failed)."""
    from azmanagers.detached.job import DetachedJob

    info = DetachedJob.attach(vm, job_id).record()
    if json_out:
        echo_json(info)
        return
    typer.echo(info.status)
    if info.error_type or info.error_message:
        typer.echo(f"{info.error_type or 'error'}: {info.error_message}")


def _follow(vm: str, job_id: str, stream: str) -> None:
    from azmanagers.detached.job import DetachedJob

    for text in DetachedJob.attach(vm, job_id).follow(stream):
        typer.echo(text, nl=False)
        sys.stdout.flush()


@job_app.command("logs")
def job_logs(
    job_id: JobArgument,
    vm: VmOption,
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr, not stdout.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
) -> None:
    """Print a job's stdout (or stderr)."""
    from azmanagers.detached.job import DetachedJob

    stream = "stderr" if stderr else "stdout"
    if follow:
        _follow(vm, job_id, stream)
    else:
        typer.echo(DetachedJob.attach(vm, job_id).read(stream), nl=False)


@job_app.command("wait")
def job_wait(
    job_id: JobArgument,
    vm: VmOption,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up after this many seconds.")
    ] = None,
) -> None:
    """Wait for a job to finish; exit 0 when it succeeded, 1 otherwise."""
    from azmanagers.detached.job import DetachedJob, check_timeout

    check_timeout(timeout, "--timeout")
    status = DetachedJob.attach(vm, job_id).wait(timeout)
    typer.echo(status)
    if status != "succeeded":
        raise typer.Exit(1)


@job_app.command("kill")
def job_kill(job_id: JobArgument, vm: VmOption) -> None:
    """Stop a job's processes."""
    from azmanagers.detached.job import DetachedJob

    typer.echo(DetachedJob.attach(vm, job_id).kill())
