"""The ``azm`` command line: the app, ``main`` and its one-line error mapping.

One module per command group lives here (manifest, template and template_add, vm, job, gc,
emulator, batch with batch_output, batch_options and batch_package, cluster with cluster_exec
and cluster_output, demo), with the options they share in ``options``; this
``__init__`` only makes the app, registers the groups and maps errors to one ``Error: ...`` line
(tracebacks with ``--debug``). cli/ may import the public API (``azmanagers``), the feature
packages (cluster, detached, batch), config, ``providers.gc`` and the provider registry (never a
provider's own module), the emulator (for ``azm emulator``), errors and _version.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Protocol, cast

import typer

from azmanagers.errors import AzManagersError, ConfigError

BAD_INPUT_EXIT = 2
"""A bad input (``ConfigError``) exits 2, as click's usage errors do; other errors exit 1."""

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
    # urllib3 logs each request line whole, a SAS signature in its query included: never
    # below INFO (the Azure SDK's own HTTP log redacts query values).
    logging.getLogger("urllib3").setLevel(logging.INFO)
    if not debug:
        # Dask reads its logging levels when distributed is first imported (later, lazily).
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from azmanagers.cli.batch import batch_app
    from azmanagers.cli.cluster import cluster_app
    from azmanagers.cli.demo import demo_command
    from azmanagers.cli.emulator import emulator_app
    from azmanagers.cli.gc import gc_command
    from azmanagers.cli.job import job_app
    from azmanagers.cli.manifest import manifest_app
    from azmanagers.cli.template import template_app
    from azmanagers.cli.vm import vm_app

    app.command("demo")(demo_command)
    app.command("gc")(gc_command)
    app.add_typer(vm_app, name="vm")
    app.add_typer(job_app, name="job")
    app.add_typer(manifest_app, name="manifest")
    app.add_typer(template_app, name="template")
    app.add_typer(emulator_app, name="emulator")
    app.add_typer(batch_app, name="batch")
    app.add_typer(cluster_app, name="cluster")
    _registered = True


class _UsageProblem(Protocol):
    """What click's exceptions offer: ``show()`` prints click's message, ``exit_code``."""

    exit_code: int

    def show(self) -> None:
        """Print the usage line, the hint and ``Error: ...`` to stderr."""


def _click_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """Return click's exception and abort classes, of typer's own click and of the installed one.

    Some typer versions ship a click of their own (``typer._click``): ``click.ClickException``
    is then not what typer raises. Its classes are found from what typer exports.
    """
    import click

    shown = {c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"}
    shown.add(click.ClickException)
    aborts = {typer.Abort, click.exceptions.Abort}
    return tuple(shown), tuple(aborts)


def main(argv: list[str] | None = None) -> int:
    """Run ``azm``; return the exit code (0 on success, 2 for a usage error or a bad input,
    1 for any other error, 130 when interrupted)."""
    _register()
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    shown, aborts = _click_errors()
    try:
        # Without standalone mode, click returns a ``typer.Exit``'s code instead of raising it.
        code = app(args=args, prog_name="azm", standalone_mode=False)
    except AzManagersError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"Error: {exc}", err=True)
        return BAD_INPUT_EXIT if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        typer.echo("Error: interrupted.", err=True)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except shown as exc:  # a usage error: click's usage line, a hint, and exit code 2
        problem = cast(_UsageProblem, exc)
        problem.show()
        return int(problem.exit_code)
    except aborts:
        typer.echo("Aborted.", err=True)
        return 1
    except Exception as exc:
        if _state["debug"]:
            raise
        typer.echo(
            f"Error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True
        )
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
