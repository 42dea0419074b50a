"""The ``azm batch package`` commands: register and list application packages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from azmanagers.cli.batch_options import StorageOption
from azmanagers.cli.batch_output import when
from azmanagers.cli.options import JsonOption, echo_json

package_app = typer.Typer(
    name="package",
    help="Application packages: archives or folders unpacked once per node for runs.",
    no_args_is_help=True,
    add_completion=False,
)


@package_app.command("add")
def package_add(
    name: Annotated[str, typer.Argument(help="The package's name, e.g. dsm2.")],
    version: Annotated[str, typer.Argument(help="Its version, e.g. 8.2.")],
    path: Annotated[Path, typer.Argument(help="An archive (.tar.gz, .zip) or a folder.")],
    storage: StorageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register an application package in the storage (versions never change)."""
    from azmanagers.batch.api import open_job_storage
    from azmanagers.batch.packages import add_package

    opened = open_job_storage(storage)
    try:
        info = add_package(opened, name, version, path)
    finally:
        opened.close()
    if json_out:
        echo_json(info)
    else:
        typer.echo(
            f"package {info.name} {info.version} registered ({info.size} bytes, "
            f"sha256 {info.sha256[:12]}); use it as --package {info.name}:{info.version}"
        )


@package_app.command("list")
def package_list(storage: StorageOption = None, json_out: JsonOption = False) -> None:
    """List the registered application packages."""
    from azmanagers.batch.api import open_job_storage
    from azmanagers.batch.packages import list_packages

    opened = open_job_storage(storage)
    try:
        found = list_packages(opened)
    finally:
        opened.close()
    if json_out:
        echo_json(found)
    elif not found:
        typer.echo(f"no packages in {opened.url}")
    else:
        typer.echo(f"{'NAME':<20} {'VERSION':<12} {'SIZE':>10}  {'ADDED':<19}  SOURCE")
        for p in found:
            typer.echo(
                f"{p.name:<20} {p.version:<12} {p.size:>10}  {when(p.created):<19}  {p.source}"
            )
