"""What the ``azm cluster`` commands print: summaries, node and template tables, results."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from azmanagers.errors import AzManagersError

if TYPE_CHECKING:
    from azmanagers.named.wire import HeadStatus, NodeResult, NodeStatus
    from azmanagers.state.clusters import ClusterRecord

NameArgument = Annotated[str, typer.Argument(help="The cluster's name.", show_default=False)]
EPOCH_2001_S = 1.0e9
"""A ``joined_at`` past this is a time of day (epoch seconds); below, seconds to join."""
LOG_TAIL_LINES = 20
"""The lines of a failed setup's output that ``azm cluster setup`` shows."""


@dataclass(frozen=True)
class ClusterSummary:
    """A cluster as ``list``, ``start --json`` and ``import --json`` show it: its record
    without the credentials (certificate, token, CA, client key)."""

    name: str
    status: str
    nodes: int
    """The pool's target size as last recorded."""
    joined: int | None
    """Nodes whose worker joined, as the head said (None: the head was not asked)."""
    provider: str
    template: str
    head_template: str
    pool: str
    head: str
    host: str
    port: int
    scheduler: str
    autostop_s: float
    age_s: float
    created_at: float
    updated_at: float
    step: str
    reason: str
    notes: tuple[str, ...] = ()
    """What ``--refresh`` found and changed."""


def summary(
    record: ClusterRecord, status: HeadStatus | None = None, notes: tuple[str, ...] = ()
) -> ClusterSummary:
    """The public fields of ``record`` (listed one by one: a new secret field stays out)."""
    r = record
    return ClusterSummary(
        name=r.name,
        status=r.status,
        nodes=status.target if status is not None else r.nodes,
        joined=status.joined if status is not None else None,
        provider=r.provider,
        template=r.template,
        head_template=r.head_template,
        pool=r.pool,
        head=r.head,
        host=r.host,
        port=r.port,
        scheduler=r.scheduler,
        autostop_s=r.autostop_s,
        age_s=max(0.0, time.time() - r.created_at) if r.created_at else 0.0,
        created_at=r.created_at,
        updated_at=r.updated_at,
        step=r.step,
        reason=r.reason,
        notes=notes,
    )


def head_silent(record: ClusterRecord, exc: Exception, refresh: bool) -> str:
    """The error of a head that does not answer (with ``refresh``: what the cloud shows)."""
    where = f"{record.host}:{record.port}" if record.port else "no address yet"
    text = (
        f"the head of cluster {record.name} ({record.head}, {where}) does not answer ({exc}). "
        f"`azm cluster stop {record.name}` still works: it deletes the pool and the head "
        "through the provider."
    )
    if not refresh:
        return text + f" `azm cluster nodes {record.name} --refresh` looks at the cloud."
    from azmanagers.named.refresh import refresh as refresh_record

    found = refresh_record(record)
    notes = "; ".join(found.notes) or "nothing changed"
    return text + f" The cloud shows (status {found.record.status}): {notes}."


def span(seconds: float) -> str:
    """``seconds`` as people read it: 45s, 12m, 3h05m, 2d04h."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def say(text: str) -> None:
    """Print progress or a note on stderr."""
    typer.echo(text, err=True)


def print_clusters(rows: Sequence[ClusterSummary]) -> None:
    """The ``azm cluster list`` table."""
    typer.echo(f"{'NAME':<24} {'STATUS':<9} {'NODES':<7} {'PROVIDER':<8} {'AGE':<7} AUTOSTOP")
    for row in rows:
        nodes = str(row.nodes) if row.joined is None else f"{row.joined}/{row.nodes}"
        autostop = span(row.autostop_s) if row.autostop_s else "-"
        typer.echo(
            f"{row.name:<24} {row.status:<9} {nodes:<7} {row.provider:<8} "
            f"{span(row.age_s):<7} {autostop}"
        )
        if row.reason and row.status != "up":
            typer.echo(f"  {row.reason}")


def print_status(status: HeadStatus) -> None:
    """What ``azm cluster nodes`` shows of the head's answer."""
    now = time.time()
    typer.echo(
        f"cluster {status.name}: {status.joined} of {status.target} nodes joined "
        f"(max {status.max_nodes}), scheduler {status.scheduler}, head up "
        f"{span(now - status.started_at)}"
    )
    autostop = f", autostop after {span(status.autostop_s)} idle" if status.autostop_s else ""
    typer.echo(
        f"clients {status.clients}, tasks {status.tasks}, idle {span(status.idle_s)}{autostop}"
    )
    if status.error:
        typer.echo(f"error: {status.error}")
    if status.nodes:
        typer.echo(f"{'NODE':<28} {'STATE':<9} {'ADDRESS':<16} JOINED")
        for node in status.nodes:
            typer.echo(
                f"{node.name:<28} {node.state:<9} {node.address or '-':<16} {_joined(node, now)}"
            )
    else:
        typer.echo("no nodes")
    if status.failures:
        typer.echo("nodes that failed:")
        for line in status.failures[-5:]:
            typer.echo(f"  {line}")
        if status.failure_log:
            typer.echo(f"the boot log of the last one ends:\n{status.failure_log}")


def _joined(node: NodeStatus, now: float) -> str:
    """When the node joined: its uptime, or (a head that reports durations) the time it took."""
    if node.joined_at <= 0:
        return "-"
    if node.joined_at >= EPOCH_2001_S:
        return f"up {span(now - node.joined_at)}"
    return f"{node.joined_at:.1f}s after boot"


@dataclass(frozen=True)
class TemplateChoice:
    """A template ``azm cluster start`` can use."""

    kind: str
    """``scaleset`` (--template) or ``vm`` (--head-template)."""
    name: str
    provider: str
    max_instances: int | None
    """The most nodes (scale-set templates; None for VM templates or when unreadable)."""
    problem: str = ""
    """Why the template cannot be used as it is (empty: it can)."""


def template_choices() -> list[TemplateChoice]:
    """The scale-set templates and the VM templates (for the head) on this machine."""
    from azmanagers.config.settings import resolve
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import list_templates

    out: list[TemplateChoice] = []
    for kind in ("scaleset", "vm"):
        for name, tmpl in list_templates(kind).items():
            provider, most, problem = "?", None, ""
            try:
                provider = template_provider(tmpl)
                if kind == "scaleset":
                    resolved = resolve({**tmpl, "provider": provider}, {}, template_name=name)
                    most = resolved.max_instances
            except AzManagersError as exc:
                problem = str(exc)
            out.append(TemplateChoice(kind, name, provider, most, problem))
    return out


def print_templates(choices: Sequence[TemplateChoice]) -> None:
    """The ``azm cluster templates`` tables: scale-set templates, then VM templates."""
    typer.echo("scale-set templates (--template):")
    typer.echo(f"  {'NAME':<24} {'PROVIDER':<8} MAX_NODES")
    for c in (c for c in choices if c.kind == "scaleset"):
        most = "?" if c.max_instances is None else str(c.max_instances)
        typer.echo(
            f"  {c.name:<24} {c.provider:<8} {most}" + (f"  ({c.problem})" * bool(c.problem))
        )
    typer.echo("VM templates for the head (--head-template):")
    typer.echo(f"  {'NAME':<24} PROVIDER")
    for c in (c for c in choices if c.kind == "vm"):
        typer.echo(f"  {c.name:<24} {c.provider}" + (f"  ({c.problem})" * bool(c.problem)))
    typer.echo("add more with `azm template add-scaleset` and `azm template add-vm`")


def _exit_text(result: NodeResult) -> str:
    return "timed out" if result.exit_code == -1 else f"exit {result.exit_code}"


def _echo_output(result: NodeResult) -> None:
    """The node's stdout on stdout and its stderr on stderr, as they came."""
    if result.stdout:
        typer.echo(result.stdout, nl=not result.stdout.endswith("\n"))
    if result.stderr:
        typer.echo(result.stderr, nl=not result.stderr.endswith("\n"), err=True)


def print_exec(results: Sequence[NodeResult]) -> None:
    """What ``azm cluster exec`` prints: one node's output as it came; for several, a
    header line per node, its output, then a table NODE EXIT SECONDS."""
    if len(results) == 1:
        _echo_output(results[0])
        if results[0].exit_code == -1:
            say(f"node {results[0].node}: timed out after {results[0].duration_s:.1f} s")
        return
    for result in results:
        typer.echo(f"== node {result.node} ({_exit_text(result)}, {result.duration_s:.1f} s) ==")
        _echo_output(result)
    typer.echo(f"{'NODE':<28} {'EXIT':<9} SECONDS")
    for result in results:
        code = "timeout" if result.exit_code == -1 else str(result.exit_code)
        typer.echo(f"{result.node:<28} {code:<9} {result.duration_s:.1f}")
    failed = sum(1 for r in results if not r.ok)
    if failed:
        say(f"{failed} of {len(results)} nodes failed")


def setup_result(result: NodeResult) -> str:
    """``ok``, ``skipped`` or ``failed exit N`` (``failed timed out``)."""
    if result.skipped:
        return "skipped"
    return "ok" if result.ok else f"failed {_exit_text(result)}"


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def print_setup(results: Sequence[NodeResult]) -> None:
    """The ``azm cluster setup`` table (NODE RESULT SECONDS), then each failed node's name
    and the tail of its output."""
    typer.echo(f"{'NODE':<28} {'RESULT':<18} SECONDS")
    for result in results:
        seconds = "-" if result.skipped else f"{result.duration_s:.1f}"
        typer.echo(f"{result.node:<28} {setup_result(result):<18} {seconds}")
    for result in (r for r in results if not r.ok):
        typer.echo(f"node {result.node}: the setup script {_exit_text(result)}; its output ends:")
        output = "\n".join(t.rstrip("\n") for t in (result.stdout, result.stderr) if t.strip())
        typer.echo(tail(output) or "(no output)")
