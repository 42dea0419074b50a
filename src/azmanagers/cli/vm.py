"""The ``azm vm`` commands: create, list and delete detached VMs."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from azmanagers.cli.options import JsonOption, echo_json

if TYPE_CHECKING:
    from azmanagers.detached.vms import VMSummary

vm_app = typer.Typer(
    name="vm",
    help="Create, list and delete detached VMs (VMs running the detached service).",
    no_args_is_help=True,
    add_completion=False,
)

VmOption = Annotated[str, typer.Option("--vm", help="The detached VM's name.", show_default=False)]


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
    json_out: JsonOption = False,
) -> None:
    """Create a VM running the detached service and wait until it answers."""
    from azmanagers.detached.api import addproc

    vm = addproc(
        template,
        name=name,
        nic_template=nic,
        timeout=timeout,
    )
    if json_out:
        echo_json(vm.summary(answers=True))  # the record without its token
        return
    typer.echo(f"VM {vm.name} ready at {vm.host}:{vm.port} ({vm.provider})")


@vm_app.command("list")
def vm_list(json_out: JsonOption = False) -> None:
    """List the detached VMs recorded on this machine, and whether each answers.

    A record file that cannot be read is reported (on stderr; with --json under
    ``problems``) and the others are listed; the exit status is then 1.
    """
    from azmanagers.detached.listing import list_vms

    listing = list_vms()
    if json_out:
        echo_json(listing)
    elif not listing.vms and not listing.problems:
        typer.echo("no detached VMs (create one with: azm vm create)")
    else:
        _print_vms(listing.vms)
        for problem in listing.problems:
            typer.echo(f"cannot list {problem.file}: {problem.error}", err=True)
    if listing.problems:
        raise typer.Exit(1)


def _print_vms(vms: list[VMSummary]) -> None:
    typer.echo(f"{'NAME':<20} {'PROVIDER':<8} {'ADDRESS':<22} {'STATE':<8} CREATED")
    for vm in vms:
        address = f"{vm.host}:{vm.port}" if vm.host else "-"  # not known until the VM exists
        typer.echo(
            f"{vm.name:<20} {vm.provider:<8} {address:<22} {vm.state:<8} {_when(vm.created_at)}"
        )


@vm_app.command("delete")
def vm_delete(
    name: Annotated[str, typer.Argument(help="The VM's name.", show_default=False)],
) -> None:
    """Delete a detached VM (its running jobs end with it)."""
    from azmanagers.detached.api import rmproc

    rmproc(name)
    typer.echo(f"VM {name} deleted")
