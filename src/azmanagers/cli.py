"""The ``azm`` command line: one ``Error: ...`` line on failure, a traceback only with ``--debug``."""

from __future__ import annotations

import logging
import sys

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


def _register() -> None:
    from azmanagers.cli_config import manifest_app, template_app

    app.add_typer(manifest_app, name="manifest")
    app.add_typer(template_app, name="template")


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
        typer.echo(f"Error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
