"""The ``azm cluster`` commands but exec, setup and ssh (``cluster_exec``): named clusters."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from azmanagers.cli.cluster_exec import cluster_exec, cluster_setup, cluster_ssh
from azmanagers.cli.cluster_output import (
    ClusterSummary,
    NameArgument,
    head_silent,
    print_clusters,
    print_status,
    print_templates,
    say,
    summary,
    template_choices,
)
from azmanagers.cli.options import JsonOption, echo_json
from azmanagers.errors import ConfigError, DetachedServiceError

if TYPE_CHECKING:
    from azmanagers.named.refresh import Refreshed

cluster_app = typer.Typer(
    name="cluster",
    help="Named clusters: a head VM runs the scheduler, so the cluster outlives this process.",
    no_args_is_help=True,
    add_completion=False,
)

_RESIZE = re.compile(r"([+-]?)(\d+)")


@cluster_app.command("start")
def cluster_start(
    name: NameArgument,
    template: Annotated[
        str, typer.Option("--template", "-t", help="The workers' scale-set template.")
    ] = "local",
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", help="Workers to start with (at least 1).")
    ] = 1,
    head_template: Annotated[
        str | None,
        typer.Option(
            "--head-template",
            help="The head's VM template (default 'local' on the local provider).",
            show_default=False,
        ),
    ] = None,
    autostop: Annotated[
        str | None,
        typer.Option(
            "--autostop",
            help="Stop the cluster after this long idle, e.g. 30m (default: never).",
            show_default=False,
        ),
    ] = None,
    setup: Annotated[
        Path | None,
        typer.Option(
            "--setup",
            help="A bash script each node runs before its worker joins (again: `azm cluster "
            "setup`).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every node's worker joined.")
    ] = False,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout", help="How long to wait, e.g. 15m or 900 (seconds).", show_default=False
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Start a named cluster: its head runs the scheduler and keeps the pool at size.

    Progress goes to stderr. `azm cluster templates` lists what --template and
    --head-template take.
    """
    from azmanagers.named.start import start_cluster

    if nodes < 0:
        raise ConfigError(f"--nodes {nodes}: give a whole number of at least 0.")
    cluster = start_cluster(
        name,
        template=template,
        nodes=nodes,
        head_template=head_template,
        autostop=autostop,
        setup=setup,
        wait=wait,
        timeout=timeout,
        progress=say,
    )
    cluster.close()
    record = cluster.record
    if json_out:
        echo_json(summary(record))
        return
    joined = f"{nodes} joined" if wait else "starting; `azm cluster nodes` shows them"
    typer.echo(f"cluster {name} up: scheduler {record.scheduler}, {nodes} nodes ({joined})")
    typer.echo(f"connect with azmanagers.connect({name!r}); stop with `azm cluster stop {name}`")


@cluster_app.command("list")
def cluster_list(
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh", help="Ask each head (and the cloud when it does not answer) first."
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """List the named clusters this machine records (without --refresh: no network call).

    A record that cannot be read is reported on stderr and the others are listed; the exit
    status is then 1.
    """
    rows: list[ClusterSummary]
    problems: list[str] = []
    if refresh:
        from azmanagers.named.refresh import refresh_all

        found: list[Refreshed] = refresh_all(problems)
        rows = [summary(f.record, f.status, f.notes) for f in found]
    else:
        from azmanagers.named.handle import named_clusters

        rows = [summary(r) for r in named_clusters(problems)]
    if json_out:
        echo_json(rows)
    elif not rows:
        typer.echo("no named clusters (start one with: azm cluster start NAME)")
    else:
        print_clusters(rows)
    if not json_out:
        for row in rows:
            for note in row.notes:
                say(f"cluster {row.name}: {note}")
    for problem in problems:
        typer.echo(f"cannot list a cluster: {problem}", err=True)
    if problems:
        raise typer.Exit(1)


@cluster_app.command("nodes")
def cluster_nodes(
    name: NameArgument,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Also check the cloud: that the pool is there, or what is left when the "
            "head does not answer.",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Ask the cluster's head for its nodes: state, address, when each joined."""
    from azmanagers.named.handle import named_cluster

    cluster = named_cluster(name)
    try:
        status = cluster.status()
    except DetachedServiceError as exc:
        raise DetachedServiceError(head_silent(cluster.record, exc, refresh)) from None
    finally:
        cluster.close()
    notes: tuple[str, ...] = ()
    if refresh:
        from azmanagers.named.refresh import refresh as refresh_record

        notes = refresh_record(cluster.record).notes
    if json_out:
        echo_json({**status.to_json(), "notes": list(notes)} if refresh else status.to_json())
        return
    print_status(status)
    for note in notes:
        say(f"cluster {name}: {note}")


@cluster_app.command("templates")
def cluster_templates(json_out: JsonOption = False) -> None:
    """List what `start` can use: scale-set templates (--template), VM templates
    (--head-template)."""
    choices = template_choices()
    if json_out:
        echo_json({kind: [c for c in choices if c.kind == kind] for kind in ("scaleset", "vm")})
        return
    print_templates(choices)


def parse_resize(text: str) -> tuple[int | None, int | None]:
    """``"5"`` -> (5, None): that many nodes; ``"+2"``/``"-1"`` -> (None, K): change by K."""
    match = _RESIZE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"resize to {text!r}: give a node count (5) or a change (+2, -1).")
    sign, digits = match.groups()
    if not sign:
        return int(digits), None
    return None, int(digits) * (-1 if sign == "-" else 1)


@cluster_app.command(
    "resize",
    context_settings={"ignore_unknown_options": True},  # "-1" is a value, not an option
)
def cluster_resize(
    name: NameArgument,
    size: Annotated[
        str,
        typer.Argument(help="N nodes, or +K / -K to add or remove K.", show_default=False),
    ],
    json_out: JsonOption = False,
) -> None:
    """Set the number of nodes (N), or add (+K) or remove (-K) some; the head does it."""
    from azmanagers.named.handle import named_cluster

    nodes, add = parse_resize(size)
    cluster = named_cluster(name)
    before = cluster.record.nodes
    try:
        status = cluster.resize(nodes, add=add)
    except DetachedServiceError as exc:
        raise DetachedServiceError(head_silent(cluster.record, exc, False)) from None
    finally:
        cluster.close()
    if json_out:
        echo_json(status.to_json())
        return
    typer.echo(
        f"cluster {name}: {status.target} nodes (was {before}), {status.joined} joined now; "
        f"`azm cluster nodes {name}` follows them"
    )


@cluster_app.command("stop")
def cluster_stop(
    name: NameArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete the cluster's pool, its head and its record (run again to finish a stop)."""
    from azmanagers.named.handle import load_record
    from azmanagers.named.stop import stop_cluster

    record = load_record(name)
    if not yes:
        what = (
            f"delete cluster {name}'s pool {record.pool} ({record.nodes} nodes), its head "
            f"{record.head} and its record"
        )
        if not _interactive():
            raise ConfigError(
                f"`azm cluster stop {name}` would {what}; stdin is not a terminal, so pass "
                "--yes to confirm."
            )
        typer.confirm(f"{what[0].upper()}{what[1:]}?", abort=True)
    stop_cluster(name, progress=say)
    typer.echo(f"cluster {name} stopped; nothing tagged with it is left")


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


@cluster_app.command("export")
def cluster_export(
    name: NameArgument,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="The file to write (mode 0600).", show_default=False),
    ],
) -> None:
    """Write the cluster's record to a file, for `azm cluster import` on another machine."""
    from azmanagers.named.transfer import export_record

    path = export_record(name, output)
    typer.echo(
        f"wrote cluster {name}'s record to {path} (mode 0600). It holds the cluster's "
        "credentials (the head's token, the client's TLS key): keep it private. "
        f"Elsewhere: `azm cluster import {path.name}`."
    )


@cluster_app.command("import")
def cluster_import(
    file: Annotated[
        Path, typer.Argument(help="A file written by `azm cluster export`.", show_default=False)
    ],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite a record of the same name.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Record a cluster exported on another machine, to use it from here."""
    from azmanagers.named.transfer import import_record

    record = import_record(file, replace=replace)
    if json_out:
        echo_json(summary(record))
        return
    typer.echo(
        f"recorded cluster {record.name} ({record.status}, head {record.head}); "
        f"`azm cluster nodes {record.name}` asks its head"
    )


# ``--`` ends the options: the words after it are the command's, dashes and all.
cluster_app.command("exec")(cluster_exec)
cluster_app.command("setup")(cluster_setup)
cluster_app.command("ssh")(cluster_ssh)
