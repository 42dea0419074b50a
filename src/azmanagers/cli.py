"""The ``azm`` command line: one ``Error: ...`` line on failure (tracebacks with ``--debug``)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from azmanagers.errors import AzManagersError

app = typer.Typer(
    name="azm",
    help="Run Python code and executables on Azure VM scale sets (and on this machine).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
) -> None:
    """Run Python code and executables on Azure VM scale sets (and on this machine)."""
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING)
    if not debug:
        # Dask reads its logging levels when distributed is first imported (later, lazily).
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


@app.command()
def demo() -> None:
    """Start 4 local workers, estimate pi on them, show a worker log, remove them (no account)."""
    from azmanagers.demo import run_demo

    code = run_demo()
    if code:
        raise typer.Exit(code)


@app.command("gc")
def gc_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    cluster: str = typer.Option(None, "--cluster", help="Only this cluster (exact tag match)."),
) -> None:
    """Delete what a killed caller left behind: resources whose owner is gone or expired."""
    from azmanagers.collect import gc

    found = gc(dry_run=dry_run, cluster=cluster)
    verb = "would delete" if dry_run else "deleted"
    for item in found:
        typer.echo(
            f"{verb} {item.provider} {item.kind} {item.name} "
            f"(cluster {item.cluster}): {item.reason}"
        )
    if not found:
        typer.echo("nothing to collect")


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


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from azmanagers.cli_config import manifest_app, template_app
    from azmanagers.cli_detached import job_app, vm_app

    app.add_typer(vm_app, name="vm")
    app.add_typer(job_app, name="job")
    app.add_typer(manifest_app, name="manifest")
    app.add_typer(template_app, name="template")
    app.add_typer(emulator_app, name="emulator")
    _registered = True


def main(argv: list[str] | None = None) -> int:
    """Run ``azm``; return the exit code (0 on success)."""
    _register()
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except AzManagersError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"Error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("Error: interrupted.", err=True)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Abort):
            return 1
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if _state["debug"]:
            raise
        typer.echo(
            f"Error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
