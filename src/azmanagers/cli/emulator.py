"""The ``azm emulator`` commands: serve the ARM/IMDS emulator on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    import tempfile
    import threading

    from azmanagers.config.paths import atomic_write_text
    from azmanagers.emulator import start_emulator

    folder = folder or Path(tempfile.mkdtemp(prefix="azm-emulator-"))
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
