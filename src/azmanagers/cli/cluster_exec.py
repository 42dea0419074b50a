"""The ``azm cluster`` commands that run things on the nodes: exec, setup and ssh."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from azmanagers.cli.cluster_output import NameArgument, head_silent, print_exec, print_setup, say
from azmanagers.cli.options import JsonOption, echo_json
from azmanagers.errors import DetachedServiceError

if TYPE_CHECKING:
    from azmanagers.named.handle import NamedCluster

TIMED_OUT_EXIT = 124
"""``azm cluster exec`` on one node exits with this when the command timed out (as timeout(1))."""

NodeOption = Annotated[
    str | None,
    typer.Option("--node", help="Only this node (see `azm cluster nodes`).", show_default=False),
]
CommandArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="The command after `--`: its words, or one bash text ('nproc; hostname').",
        show_default=False,
    ),
]


@contextmanager
def _cluster(name: str) -> Iterator[NamedCluster]:
    """The named cluster; a scheduler that does not answer is told as the head's silence."""
    from azmanagers.named.handle import named_cluster

    cluster = named_cluster(name)
    try:
        yield cluster
    except OSError as exc:  # distributed's "Timed out trying to connect to ..."
        raise DetachedServiceError(head_silent(cluster.record, exc, False)) from None
    finally:
        cluster.close()


def command_of(words: Sequence[str] | None) -> str | list[str]:
    """The command to run: one word is bash text (``'nproc; hostname'``), several are an
    argument list that the library quotes."""
    words = list(words or [])
    return words[0] if len(words) == 1 else words


def cluster_exec(
    name: NameArgument,
    command: CommandArgument = None,
    node: NodeOption = None,
    timeout: Annotated[
        str,
        typer.Option("--timeout", help="Kill the command after this long, e.g. 10m or 600."),
    ] = "1h",
    json_out: JsonOption = False,
) -> None:
    """Run a command on every node (or --node X) at once, through the workers (no sshd).

    One node: its output as it came, and its exit status is azm's (124: timed out).

    Several: a header and the output per node, a table; azm exits 1 unless all exited 0.

    Example: azm cluster exec study -- nproc
    """
    from azmanagers.config.durations import parse_duration

    timeout_s = parse_duration(timeout)
    with _cluster(name) as cluster:
        results = cluster.exec(command_of(command), node=node, timeout=timeout_s)
    if json_out:
        echo_json(results)
    elif not results:
        say(f"no node of cluster {name} has joined; nothing ran (`azm cluster nodes {name}`)")
    else:
        print_exec(results)
    if not results:
        raise typer.Exit(1)
    if len(results) == 1:
        code = results[0].exit_code
        raise typer.Exit(TIMED_OUT_EXIT if code == -1 else code)
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def cluster_setup(
    name: NameArgument,
    only_new: Annotated[
        bool,
        typer.Option("--only-new", help="Only on nodes that have not run this script yet."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Run the cluster's setup script (`start --setup FILE`) again on every node.

    A result per node; a node that failed is named with the end of its output (azm exits 1).

    New nodes run the script before they join anyway.
    """
    with _cluster(name) as cluster:
        results = cluster.setup(only_new=only_new)
    if json_out:
        echo_json(results)
    elif not results:
        say(f"no node of cluster {name} has joined yet; each runs the setup before it joins")
    else:
        print_setup(results)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


def cluster_ssh(
    name: NameArgument,
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="A command to run instead of an interactive shell (after `--`).",
            show_default=False,
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="A node instead of the head (see `azm cluster nodes`).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """A shell on the cluster's head (or --node X), or a command there after `--`.

    Through the cluster's agents (no sshd, no port 22); azm exits with the shell's status.
    """
    with _cluster(name) as cluster:
        code = cluster.ssh(node=node, command=list(command) if command else None)
    raise typer.Exit(code)
