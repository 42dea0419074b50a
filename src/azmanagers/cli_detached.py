"""The ``azm vm`` and ``azm job`` commands: detached VMs and the jobs they run."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Annotated

import typer

from azmanagers.errors import ConfigError

vm_app = typer.Typer(
    name="vm",
    help="Create, list and delete detached VMs (VMs running the detached service).",
    no_args_is_help=True,
    add_completion=False,
)
job_app = typer.Typer(
    name="job",
    help="Run scripts on detached VMs and follow them: run, list, status, logs, wait, kill.",
    no_args_is_help=True,
    add_completion=False,
)

VmOption = Annotated[str, typer.Option("--vm", help="The detached VM's name.", show_default=False)]
JobArgument = Annotated[str, typer.Argument(help="The job id.", show_default=False)]


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


@vm_app.command("create")
def vm_create(
    template: Annotated[str, typer.Argument(help="A VM template ('local' is built in).")] = "local",
    name: Annotated[str | None, typer.Option("--name", help="The VM's name.")] = None,
    nic: Annotated[str | None, typer.Option("--nic", help="Azure: the NIC template.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait for the service.")
    ] = None,
) -> None:
    """Create a VM running the detached service and wait until it answers."""
    from azmanagers.detached import addproc

    vm = addproc(
        template,
        name=name,
        nic_template=nic,
        timeout=timeout,
    )
    typer.echo(f"VM {vm.name} ready at {vm.host}:{vm.port} ({vm.provider})")


@vm_app.command("list")
def vm_list() -> None:
    """List the detached VMs recorded on this machine, and whether each answers."""
    from azmanagers.detached_vms import list_vm_names, load_vm

    names = list_vm_names()
    if not names:
        typer.echo("no detached VMs (create one with: azm vm create)")
        return
    typer.echo(f"{'NAME':<20} {'PROVIDER':<8} {'ADDRESS':<22} {'STATE':<8} CREATED")
    for name in names:
        vm = load_vm(name)
        state = "up" if vm.ping() else "down"
        address = f"{vm.host}:{vm.port}"
        typer.echo(
            f"{vm.name:<20} {vm.provider:<8} {address:<22} {state:<8} {_when(vm.created_at)}"
        )


@vm_app.command("delete")
def vm_delete(
    name: Annotated[str, typer.Argument(help="The VM's name.", show_default=False)],
) -> None:
    """Delete a detached VM (its running jobs end with it)."""
    from azmanagers.detached import rmproc

    rmproc(name)
    typer.echo(f"VM {name} deleted")


def _parse_env(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env takes KEY=VALUE, got {pair!r}.")
        env[key] = value
    return env


@job_app.command("run")
def job_run(
    script: Annotated[Path, typer.Argument(help="A Python script to run on the VM.")],
    vm: VmOption,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for the job; repeat for more.", show_default=False),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Stream its stdout.")] = False,
) -> None:
    """Run a Python script on a detached VM; print the job id (or, with --follow, its output)."""
    from azmanagers.detached import detachat

    try:
        code = script.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {script}: {exc}") from None
    job = detachat(vm, code, env=_parse_env(env), job_name=script.name)
    typer.echo(job.id)
    if follow:
        _follow(vm, job.id, "stdout")


@job_app.command("list")
def job_list(vm: VmOption) -> None:
    """List the jobs of a detached VM, oldest first."""
    from azmanagers.detached import list_jobs

    jobs = list_jobs(vm)
    if not jobs:
        typer.echo(f"no jobs on VM {vm}")
        return
    typer.echo(f"{'ID':<17} {'STATUS':<10} {'STARTED':<20} {'FINISHED':<20} NAME")
    for job in jobs:
        typer.echo(
            f"{job['id']:<17} {job['status']:<10} {_when(job.get('started_at')):<20} "
            f"{_when(job.get('finished_at')):<20} {job['name']}"
        )


@job_app.command("status")
def job_status(job_id: JobArgument, vm: VmOption) -> None:
    """Show a job's status (and its error, if it failed)."""
    from azmanagers.detached import DetachedJob

    info = DetachedJob.attach(vm, job_id).info()
    typer.echo(info["status"])
    if info.get("error_type") or info.get("error_message"):
        typer.echo(f"{info.get('error_type') or 'error'}: {info.get('error_message')}")


def _follow(vm: str, job_id: str, stream: str) -> None:
    from azmanagers.detached import DetachedJob

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
    from azmanagers.detached import DetachedJob

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
    from azmanagers.detached import DetachedJob

    status = DetachedJob.attach(vm, job_id).wait(timeout)
    typer.echo(status)
    if status != "succeeded":
        raise typer.Exit(1)


@job_app.command("kill")
def job_kill(job_id: JobArgument, vm: VmOption) -> None:
    """Stop a job's processes."""
    from azmanagers.detached import DetachedJob

    typer.echo(DetachedJob.attach(vm, job_id).kill())
