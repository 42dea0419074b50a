"""The ``azm gc`` command: delete what killed callers left behind (by exact tag)."""

from __future__ import annotations

import typer


def gc_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be deleted."),
    cluster: str = typer.Option(None, "--cluster", help="Only this cluster (exact tag match)."),
) -> None:
    """Delete what a killed caller left behind: resources whose owner is gone or expired."""
    from azmanagers.providers.gc import gc

    found = gc(dry_run=dry_run, cluster=cluster)
    verb = "would delete" if dry_run else "deleted"
    for item in found:
        typer.echo(
            f"{verb} {item.provider} {item.kind} {item.name} "
            f"(cluster {item.cluster}): {item.reason}"
        )
    if not found:
        typer.echo("nothing to collect")
