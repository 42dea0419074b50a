"""The ``azm manifest`` commands: write and show AZMANAGERS_HOME/manifest.json."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from azmanagers.cli.options import JsonOption, echo_json, option, require_given
from azmanagers.config import manifest as _manifest

manifest_app = typer.Typer(
    name="manifest",
    help="Write or show the manifest (AZMANAGERS_HOME/manifest.json).",
    no_args_is_help=True,
    add_completion=False,
)


@manifest_app.command("write")
def manifest_write(
    resourcegroup: Annotated[str | None, option("Default Azure resource group (required).")] = None,
    subscriptionid: Annotated[
        str | None, option("Default Azure subscription id, a GUID (required).")
    ] = None,
    ssh_user: Annotated[str | None, option("User name on the VMs (required).")] = None,
    ssh_private_key_file: Annotated[
        str, typer.Option(help="ssh private key; it never leaves this machine.")
    ] = _manifest.DEFAULT_SSH_PRIVATE_KEY_FILE,
    ssh_public_key_file: Annotated[
        str, typer.Option(help="ssh public key, placed on the VMs.")
    ] = _manifest.DEFAULT_SSH_PUBLIC_KEY_FILE,
) -> None:
    """Write the manifest (mode 0600), replacing any previous one."""
    require_given(
        "azm manifest write",
        {
            "--resourcegroup": resourcegroup,
            "--subscriptionid": subscriptionid,
            "--ssh-user": ssh_user,
        },
    )
    path = _manifest.write_manifest(
        resourcegroup=str(resourcegroup),
        subscriptionid=str(subscriptionid),
        ssh_user=str(ssh_user),
        ssh_private_key_file=ssh_private_key_file,
        ssh_public_key_file=ssh_public_key_file,
    )
    typer.echo(f"Wrote the manifest to {path} (mode 0600).")


@manifest_app.command("show")
def manifest_show(json_output: JsonOption = False) -> None:
    """Print the manifest as JSON (with --json: keys sorted, as every --json output)."""
    loaded = _manifest.load_manifest()
    if json_output:
        echo_json(loaded)
    else:
        typer.echo(json.dumps(loaded.to_dict(), indent=2))
