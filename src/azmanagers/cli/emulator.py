"""The ``azm emulator`` commands: serve the ARM/IMDS emulator on loopback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from azmanagers.errors import ConfigError

emulator_app = typer.Typer(
    help="The ARM/IMDS emulator: the azure provider's real SDK path, offline.",
    no_args_is_help=True,
)


@emulator_app.command("serve")
def emulator_serve(
    folder: Annotated[
        Path | None,
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

    folder = usable_folder(folder) if folder else Path(tempfile.mkdtemp(prefix="azm-emulator-"))

    from azmanagers.config.paths import atomic_write_text
    from azmanagers.emulator import start_emulator

    emu = start_emulator(run_instances=run_instances, folder=folder)
    env_file = folder / "emulator.env"
    atomic_write_text(
        env_file, "".join(f"export {k}={v}\n" for k, v in emu.environment().items())
    )  # mode 0600: it holds the bearer token
    typer.echo(f"ARM emulator at {emu.server.base_url} (CA {emu.server.ca_file})")
    typer.echo(f"to use it: source {env_file}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        emu.stop()
        typer.echo("emulator stopped")


def usable_folder(folder: Path) -> Path:
    """Return ``folder`` (created, mode 0700, if missing) once it is a folder we can write.

    Parameters
    ----------
    folder : Path
        The ``--folder`` given.

    Returns
    -------
    Path
        ``folder`` with ``~`` expanded.

    Raises
    ------
    ConfigError
        It is a file, lies under a file, or cannot be created or written; the message names
        it and says what to do.
    """
    folder = folder.expanduser()
    fix = "Pass a folder you can write (it is created if missing), or leave --folder out."
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
