"""The arguments and options the ``azm batch`` commands share (job name, storage, cluster)."""

from __future__ import annotations

from typing import Annotated

import typer

NameArgument = Annotated[str, typer.Argument(help="The job's name.", show_default=False)]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="file:///folder or az://container/prefix (default: a folder under AZMANAGERS_HOME).",
        show_default=False,
    ),
]
ClusterOption = Annotated[
    str | None,
    typer.Option("--cluster", help="A scale-set template (default: 'local').", show_default=False),
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", help="Workers to start for the job (default 2).", show_default=False),
]
