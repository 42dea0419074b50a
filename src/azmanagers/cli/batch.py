"""The ``azm batch`` commands: run models and sweeps, follow them, fetch their outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from azmanagers.cli.batch_options import (
    ClusterOption,
    NameArgument,
    StorageOption,
    WorkersOption,
)
from azmanagers.cli.batch_output import (
    finish,
    follow_logs,
    one_line_model,
    print_jobs,
    print_log,
    print_runs,
    print_status,
    submit_and_wait,
)
from azmanagers.cli.batch_package import package_app
from azmanagers.cli.options import JsonOption, echo_json
from azmanagers.errors import ConfigError

if TYPE_CHECKING:
    from azmanagers.batch.job import Job
    from azmanagers.batch.model import Model
    from azmanagers.batch.sweep import Sweep

batch_app = typer.Typer(
    name="batch",
    help="Run models and sweeps on a cluster with staged inputs and outputs; follow them.",
    no_args_is_help=True,
    add_completion=False,
)
batch_app.add_typer(package_app, name="package")

Many = list[str] | None
"""The values of an option given any number of times (None when not given)."""


@batch_app.command("run")
def batch_run(
    spec: Annotated[
        Path | None, typer.Argument(help="A YAML spec (or use the options below).")
    ] = None,
    storage: StorageOption = None,
    cluster: ClusterOption = None,
    workers: WorkersOption = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the end (the default: this process drives).")
    ] = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Drive the job from a detached VM; return at once.")
    ] = False,
    name: Annotated[
        str | None, typer.Option("--name", help="The job's (and model's) name.")
    ] = None,
    command: Annotated[
        str | None, typer.Option("--command", help="Run by bash in each run's folder.")
    ] = None,
    inputs: Annotated[
        Many, typer.Option("--input", help="A file, folder or URL; repeat.", show_default=False)
    ] = None,
    shared: Annotated[
        Many,
        typer.Option(
            "--shared", help="An input fetched once per node; repeat.", show_default=False
        ),
    ] = None,
    env: Annotated[
        Many, typer.Option("--env", help="KEY=VALUE for every run; repeat.", show_default=False)
    ] = None,
    sweep: Annotated[
        Many,
        typer.Option(
            "--sweep",
            help="NAME=1..100, NAME=1..10..2 or NAME=a,b,c; repeat: product.",
            show_default=False,
        ),
    ] = None,
    outputs: Annotated[
        Many,
        typer.Option(
            "--output", help="GLOB[:success|failure|always] to keep; repeat.", show_default=False
        ),
    ] = None,
    packages: Annotated[
        Many,
        typer.Option(
            "--package", help="NAME:VERSION of a registered package; repeat.", show_default=False
        ),
    ] = None,
    retries: Annotated[int, typer.Option("--retries", help="Re-runs of a failed run.")] = 0,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Per run: seconds or 90s, 30m, 2h, 1d.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run a model or a sweep: from a YAML spec, or from --name and --command.

    Waits until every run ended, with a progress bar; prints a table of the runs and exits 1
    when a run failed. Submitting the same job again resumes it (runs that succeeded are
    skipped).
    """
    from azmanagers.batch.api import submit

    if wait and detach:
        raise ConfigError("--wait and --detach do not go together: pick one.")
    base: Path | None = None
    if spec is not None:
        model_options = {
            "--command": command,
            "--input": inputs,
            "--shared": shared,
            "--env": env,
            "--sweep": sweep,
            "--output": outputs,
            "--package": packages,
            "--timeout": timeout,
        }
        given = [k for k, v in model_options.items() if v] + (["--retries"] if retries else [])
        if given:
            raise ConfigError(
                f"{', '.join(given)} cannot be combined with a spec file ({spec}); put them in "
                "the spec, or leave the spec out to describe the model with options."
            )
        from azmanagers.batch.spec import load_spec

        loaded = load_spec(spec)
        what: Model | Sweep = loaded.sweep
        job_name = name or loaded.name
        storage = storage or loaded.storage
        cluster = cluster or loaded.cluster
        workers = workers if workers is not None else loaded.workers
        base = loaded.base
    else:
        what = one_line_model(
            name,
            command,
            inputs=inputs,
            shared=shared,
            env=env,
            sweep=sweep,
            outputs=outputs,
            packages=packages,
            retries=retries,
            timeout=timeout,
        )
        job_name = name or ""
    if detach:
        _detach(
            what,
            job_name,
            storage=storage,
            cluster=cluster,
            workers=workers,
            base=base,
            json_out=json_out,
        )
        return
    job, status = submit_and_wait(
        lambda progress: submit(
            what,
            name=job_name,
            storage=storage,
            cluster=cluster,
            workers=workers,
            progress=progress,
            base=base,
        ),
        job_name,
        json_out=json_out,
    )
    finish(job, status, json_out=json_out)


def _detach(
    what: Model | Sweep,
    name: str,
    *,
    storage: str | None,
    cluster: str | None,
    workers: int | None,
    base: Path | None,
    json_out: bool,
) -> None:
    from azmanagers.batch.detach import submit_detached

    job = submit_detached(
        what, name=name, storage=storage, cluster=cluster, workers=workers, base=base
    )
    if json_out:
        echo_json(job.status().to_dict())
        return
    typer.echo(f"job {job.name} submitted; its driver runs on a detached VM.")
    typer.echo(f"follow it with: azm batch status {job.name} --storage {job.root}")


def _attach(name: str, storage: str | None) -> Job:
    from azmanagers.batch.api import attach

    return attach(name, storage=storage)


@batch_app.command("status")
def batch_status(
    name: NameArgument, storage: StorageOption = None, json_out: JsonOption = False
) -> None:
    """Show a job's status and its counts of runs by state."""
    status = _attach(name, storage).status()
    if json_out:
        echo_json(status.to_dict())
    else:
        print_status(status)


@batch_app.command("runs")
def batch_runs(
    name: NameArgument,
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only runs in this state (e.g. failed).", show_default=False),
    ] = None,
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """List a job's runs: parameters, status, exit code, duration and node."""
    runs = _attach(name, storage).runs(state)
    if json_out:
        echo_json(runs)
    elif not runs:
        typer.echo(f"no runs{f' in state {state}' if state else ''} in job {name}")
    else:
        print_runs(runs)


@batch_app.command("logs")
def batch_logs(
    name: NameArgument,
    run: Annotated[str, typer.Argument(help="The run's id (see `azm batch runs`).")],
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr, not stdout.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
    attempt: Annotated[
        int | None, typer.Option("--attempt", help="This attempt (default: the last).")
    ] = None,
    member: Annotated[
        str | None,
        typer.Option("--member", help="A multi-node run's member (worker-0, node-1)."),
    ] = None,
    storage: StorageOption = None,
) -> None:
    """Print a run's stdout (or stderr); logs are kept when each attempt ends."""
    job = _attach(name, storage)
    stdio = "stderr" if stderr else "stdout"
    if follow:
        if attempt is not None or member is not None:
            raise ConfigError("--follow prints the run's attempts; leave --attempt/--member out.")
        follow_logs(job, run, stdio)
    else:
        print_log(job, run, stdio, attempt, member)


@batch_app.command("download")
def batch_download(
    name: NameArgument,
    dest: Annotated[Path, typer.Argument(help="The folder to fetch into (DIR/<run id>/...).")],
    run: Annotated[
        str | None, typer.Option("--run", help="Only this run.", show_default=False)
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace files in DIR whose content differs."),
    ] = False,
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Fetch the outputs of every run (or of one) into DIR/<run id>/ and its logs into
    DIR/<run id>/_logs/, verified.

    Files already in DIR with the same content are kept; a file with other content is an
    error unless --overwrite.
    """
    done = _attach(name, storage).download_report(dest, run=run, overwrite=overwrite)
    if json_out:
        echo_json([str(p) for p in done.paths])
    else:
        kept = len(done.paths) - done.fetched
        typer.echo(
            f"{done.fetched} files downloaded to {dest}"
            + (f" ({kept} already there, unchanged)" if kept else "")
        )


@batch_app.command("retry")
def batch_retry(
    name: NameArgument,
    failed: Annotated[
        bool,
        typer.Option(
            "--failed/--unfinished",
            help="Re-run the failed runs (or every run that did not succeed).",
        ),
    ] = True,
    cluster: ClusterOption = None,
    workers: WorkersOption = None,
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run a job's failed runs again (from its records: no local files needed) and wait."""
    job = _attach(name, storage)
    job, status = submit_and_wait(
        lambda progress: job.retry(
            failed=failed, cluster=cluster, workers=workers, progress=progress
        ),
        name,
        json_out=json_out,
    )
    finish(job, status, json_out=json_out)


@batch_app.command("cancel")
def batch_cancel(
    name: NameArgument, storage: StorageOption = None, json_out: JsonOption = False
) -> None:
    """Ask a job to stop: its driver kills every run in progress; the job ends cancelled."""
    job = _attach(name, storage)
    before = job.status()
    if not before.done:
        job.cancel()
    if json_out:
        echo_json({"job": name, "requested": not before.done, "status": before.status})
    elif before.done:
        typer.echo(f"job {name} already ended: {before.status}")
    else:
        typer.echo(f"cancel requested for job {name}; its driver stops the runs within seconds")


@batch_app.command("list")
def batch_list(storage: StorageOption = None, json_out: JsonOption = False) -> None:
    """List the jobs in a storage root with their status."""
    from azmanagers.batch.api import default_storage_url, jobs

    found = jobs(storage)
    if json_out:
        echo_json([s.to_dict() for s in found])
    elif not found:
        typer.echo(f"no batch jobs in {storage or default_storage_url()}")
    else:
        print_jobs(found)
