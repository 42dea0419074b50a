"""The ``azm gc`` command: delete what killed callers left behind (by exact tag)."""

from __future__ import annotations

import typer

from azmanagers.cli.options import JsonOption, echo_json


def gc_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    cluster: str = typer.Option(None, "--cluster", help="Only this cluster (exact tag match)."),
    json_output: JsonOption = False,
) -> None:
    """Delete what a killed caller left behind: resources whose owner is gone or expired.

    Collects everything it can; what it could not (an unreadable file, a refused call) is
    reported with its file, and the exit code is then 1.
    """
    from azmanagers.providers.gc import collect

    report = collect(dry_run=dry_run, cluster=cluster)
    if json_output:
        echo_json(report)
    else:
        verb = "would delete" if dry_run else "deleted"
        for item in report.collected:
            typer.echo(
                f"{verb} {item.provider} {item.kind} {item.name} "
                f"(cluster {item.cluster}): {item.reason}"
            )
        if not report.collected and not report.not_collected:
            typer.echo("nothing to collect")
        elif not report.collected:
            typer.echo(f"nothing {verb}: see what could not be collected below", err=True)
        for problem in report.not_collected:
            where = f" ({problem.file})" if problem.file else ""
            typer.echo(f"not collected: {problem.what}{where}: {problem.error}", err=True)
    if report.not_collected:
        raise typer.Exit(1)
