"""The ``azm emulator`` commands: serve the ARM/IMDS emulator on loopback."""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from azmanagers.errors import ConfigError

if TYPE_CHECKING:
    from azmanagers.emulator import Emulator

emulator_app = typer.Typer(
    help="The ARM/IMDS emulator: the azure provider's real SDK path, offline.",
    no_args_is_help=True,
)


@emulator_app.command("serve")
def emulator_serve(
    folder: Annotated[
        str | None,
        typer.Option(
            "--folder", help="Where to keep its CA, env file and VM folders (default: temp)."
        ),
    ] = None,
    run_instances: bool = typer.Option(
        True,
        "--run-instances/--no-run-instances",
        help="Run each VM's custom data as a process on this machine (or keep VMs as records).",
    ),
) -> None:
    """Serve ARM and IMDS on loopback until interrupted; write the variables to use it."""
    import signal
    import threading

    if folder is None:
        where = Path(tempfile.mkdtemp(prefix="azm-emulator-"))
    else:
        where = usable_folder(folder)

    from azmanagers.config.paths import atomic_write_text
    from azmanagers.emulator import start_emulator

    emu = start_emulator(run_instances=run_instances, folder=where)
    env_file = where / "emulator.env"
    atomic_write_text(env_file, env_script(emu.environment()))  # 0600: it holds the token
    az_file = where / "az-login.sh"
    atomic_write_text(az_file, az_login_script(emu, where / "azure"))  # 0600: a secret
    typer.echo(f"ARM emulator at {emu.server.base_url} (CA {emu.server.ca_file})")
    typer.echo(f"to use it: source {env_file}")
    typer.echo(f"to use the az CLI with it: source {az_file}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        emu.stop()
        typer.echo("emulator stopped")


def az_login_script(emu: Emulator, config_dir: Path) -> str:
    """Return a script to ``source``: it defines an ``az`` shell function that runs the az CLI
    in a config folder of its own (never the user's ~/.azure), trusting the emulator's CA,
    then registers the emulator as a cloud and signs in as its service principal. Nothing is
    exported into the shell, so other tools keep the system's CA bundle."""
    sp = emu.service_principal
    q = shlex.quote
    settings = " ".join(
        f"{name}={q(value)}"
        for name, value in {
            "AZURE_CONFIG_DIR": str(config_dir),
            "REQUESTS_CA_BUNDLE": str(emu.server.ca_file),
            "AZURE_CORE_INSTANCE_DISCOVERY": "false",
            "AZURE_CORE_COLLECT_TELEMETRY": "false",
        }.items()
    )
    return (
        "# the az CLI against the azmanagers emulator (AZ=/path/to/az to choose which az).\n"
        "# az login takes the emulator's client secret on its command line, so other local\n"
        "# users can see it in the process list while it runs: it opens only this emulator.\n"
        f'az() {{ {settings} command "${{AZ:-az}}" "$@"; }}\n'
        "# a folder served before holds the cloud at the port of that time: registered anew\n"
        "az cloud set -n AzureCloud >/dev/null 2>&1 || true\n"
        "az cloud unregister -n AzmEmulator >/dev/null 2>&1 || true  # not there the first time\n"
        f"az cloud register -n AzmEmulator --endpoint-resource-manager "
        f"{q(emu.server.base_url)} --output none\n"
        "az cloud set -n AzmEmulator\n"
        f"az login --service-principal -u {q(sp.client_id)} "
        f"-p {q(sp.client_secret)} -t {q(sp.tenant_id)} --output none\n"
    )


def env_script(variables: Mapping[str, str]) -> str:
    """Return ``export NAME=VALUE`` lines, each value shell-quoted (safe to ``source``)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables.items())


def usable_folder(given: str | Path) -> Path:
    """Return ``folder`` (created, mode 0700, if missing) once it is a folder we can write.

    Parameters
    ----------
    given : str or Path
        The ``--folder`` given.

    Returns
    -------
    Path
        ``folder`` with ``~`` expanded.

    Raises
    ------
    ConfigError
        It is empty, is a file, lies under a file, or cannot be created or written; the
        message names it and says what to do.
    """
    fix = "Pass a folder you can write (it is created if missing), or leave --folder out."
    if not str(given).strip():
        raise ConfigError(f"--folder is empty. {fix}")  # not the current folder by accident
    folder = Path(given).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--folder {folder} is a file, not a folder. {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe, probe_path = tempfile.mkstemp(dir=folder, prefix=".azm-probe-")
        os.close(probe)
        os.unlink(probe_path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, NotADirectoryError) or (
            isinstance(exc, FileExistsError) and not folder.is_dir()
        ):
            reason = "a part of the path is a file"
        raise ConfigError(f"--folder {folder} cannot be used ({reason}). {fix}") from exc
    return folder
