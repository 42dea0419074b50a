"""The ``azm template`` commands: list, show and remove templates (adding: ``template_add``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from azmanagers.cli.options import JsonOption, echo_json
from azmanagers.cli.template_add import (
    NameArgument,
    template_add_nic,
    template_add_scaleset,
    template_add_vm,
)
from azmanagers.config import template_schema as _schema
from azmanagers.config import templates as _templates
from azmanagers.config.paths import home

template_app = typer.Typer(
    name="template",
    help="List, show, add and remove scale-set, VM and NIC templates.",
    no_args_is_help=True,
    add_completion=False,
)
template_app.command("add-scaleset")(template_add_scaleset)
template_app.command("add-vm")(template_add_vm)
template_app.command("add-nic")(template_add_nic)

KindOption = Annotated[
    str, typer.Option("--kind", "-k", help="Template kind: scaleset, vm or nic.")
]


@dataclass(frozen=True)
class TemplateRow:
    """One line of ``azm template list``."""

    kind: str
    name: str
    provider: str
    source: str
    """``file`` (stored in AZMANAGERS_HOME) or ``built-in``."""
    summary: str


def _summary(kind: str, template: Any) -> tuple[str, str]:
    """Return (provider, one-line summary) of a template for ``azm template list``."""
    if not isinstance(template, dict):
        return "?", "not a JSON object (run `azm template show` for the error)"
    if kind == "nic":
        subnet = ""
        try:
            subnet_id = template["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"]
            subnet = f", subnet {str(subnet_id).rsplit('/', 1)[-1]}"
        except (KeyError, IndexError, TypeError):
            pass
        return "azure", f"{template.get('location', '?')}{subnet}"
    provider = str(template.get("provider", _schema.PROVIDER_AZURE))
    if provider == _schema.PROVIDER_LOCAL:
        if kind == "vm":
            return provider, "a process on this machine"
        return provider, (
            f"max_instances {template.get('max_instances')}, "
            f"nthreads {template.get('nthreads')}, memory {template.get('memory_limit')}"
        )
    value = template.get("value")
    value = value if isinstance(value, dict) else {}
    location = value.get("location", "?")
    try:
        if kind == "scaleset":
            size = value["sku"]["name"]
        else:
            size = value["properties"]["hardwareProfile"]["vmSize"]
    except (KeyError, TypeError):
        size = "?"
    return provider, f"{location}, {size}"


def _kinds(kind: str | None) -> list[str]:
    """Return the kinds to list: one (checked), or all."""
    if kind is None:
        return list(_schema.KINDS)
    _templates.templates_path(kind)  # raises ConfigError for an unknown kind
    return [kind]


def template_rows(kind: str | None) -> list[TemplateRow]:
    """Return the templates of ``kind`` (or of every kind), built-in ones too."""
    rows = []
    for one_kind in _kinds(kind):
        stored = set(_templates.stored_template_names(one_kind))
        for name, template in _templates.list_templates(one_kind).items():
            provider, summary = _summary(one_kind, template)
            source = "file" if name in stored else "built-in"
            rows.append(TemplateRow(one_kind, name, provider, source, summary))
    return rows


@template_app.command("list")
def template_list(
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind", "-k", help="Only this kind: scaleset, vm or nic.", show_default=False
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """List templates (built-in ones too) with their provider, location and size."""
    rows = template_rows(kind)
    if json_output:
        echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Templates in {home()}")
    table.add_column("kind")
    table.add_column("name", overflow="fold")
    table.add_column("provider")
    table.add_column("source")
    table.add_column("summary", overflow="fold")
    for row in rows:
        table.add_row(row.kind, row.name, row.provider, row.source, row.summary)
    Console().print(table)


@template_app.command("show")
def template_show(
    name: NameArgument, kind: KindOption = "scaleset", json_output: JsonOption = False
) -> None:
    """Print a template as JSON (validated; local templates with every key filled in)."""
    template = _templates.load_template(kind, name)
    if json_output:
        echo_json(template)
    else:
        typer.echo(json.dumps(template, indent=2))


@template_app.command("remove")
def template_remove(name: NameArgument, kind: KindOption = "scaleset") -> None:
    """Remove a stored template (removing an override of 'local' restores the built-in)."""
    path = _templates.remove_template(kind, name)
    typer.echo(f"Removed {kind} template {name!r} from {path}.")
