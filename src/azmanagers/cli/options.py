"""Options and output helpers that several ``azm`` command groups share."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

from azmanagers.errors import ConfigError

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
]


def _plain(value: Any) -> Any:
    """Return ``value`` as JSON-ready data (dataclasses become objects)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [_plain(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    """Print ``value`` (data, dataclasses, lists of them) as indented JSON on stdout."""
    typer.echo(json.dumps(_plain(value), indent=2, sort_keys=True, default=str))


def option(help_text: str) -> Any:
    """Return a string option with no default (``None`` when not given)."""
    return typer.Option(help=help_text, show_default=False)


def require_given(command: str, values: dict[str, Any]) -> None:
    """Raise ConfigError naming the first option in ``values`` that was not given."""
    for option, value in values.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ConfigError(f"{command} needs {option}. Run `{command} --help` for every option.")


# Options that the template commands (add-scaleset, add-vm) share.
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", help="An ARM tag KEY=VALUE; repeat for more.", show_default=False),
]
DatadiskOption = Annotated[
    list[str] | None,
    typer.Option(
        "--datadisk",
        help=(
            "A data disk SIZE_GB[:STORAGE_TYPE], e.g. 1023 or 512:UltraSSD_LRS; repeat for "
            "more (luns 1, 2, ...). Default type Premium_LRS."
        ),
        show_default=False,
    ),
]


SubscriptionOption = Annotated[
    str | None, option("Azure subscription id (default: the manifest's).")
]
LocationOption = Annotated[str | None, option("Azure region, e.g. southcentralus.")]
ResourceGroupOption = Annotated[str | None, option("Resource group (default: the manifest's).")]
GalleryOption = Annotated[str | None, option("Azure compute gallery holding the image.")]
ImageOption = Annotated[str | None, option("Image in the gallery.")]
ImageSubscriptionOption = Annotated[
    str | None, option("Subscription of the gallery (default: --subscriptionid).")
]
ImageResourceGroupOption = Annotated[
    str | None, option("Resource group of the gallery (default: --resourcegroup).")
]
OsDiskOption = Annotated[int | None, option("OS disk size in GB (default: 60).")]
TempdiskOption = Annotated[
    str | None, option("Shell commands preparing the temporary disk (default: /scratch link).")
]
EncryptionOption = Annotated[
    bool, typer.Option("--encryption-at-host", help="Enable encryption at host.")
]
