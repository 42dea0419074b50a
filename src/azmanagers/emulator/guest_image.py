"""What every emulated VM's image holds besides this machine's tools: docker and shutdown.

``prepare`` makes (once) a folder whose ``bin`` goes first on each emulated VM's ``PATH``:
``docker``, ``shutdown``, ``poweroff``, ``halt`` and ``reboot`` run ``guest_commands`` (the
emulated VM's own, never this machine's), and a container's ``python``, ``python3``, ``dask``,
``dask-scheduler`` and ``dask-worker`` are this machine's Python, with ``guest_network`` as its
``sitecustomize`` (a container's listeners on every interface listen on the VM's address).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

GUEST_COMMANDS = ("docker", "shutdown", "poweroff", "halt", "reboot")
CONTAINER_COMMANDS = {
    "python": "",
    "python3": "",
    "dask": "-m dask",
    "dask-scheduler": "-m distributed.cli.dask_scheduler",
    "dask-worker": "-m distributed.cli.dask_worker",
}
"""A container's Python commands: this machine's interpreter with these arguments first."""


def _write_executable(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.chmod(0o755)
    os.replace(partial, path)


def prepare(folder: Path) -> Path:
    """Make the image's folder (once); return its ``bin``, to put first on a VM's ``PATH``."""
    bin_dir = folder / "bin"
    if (bin_dir / GUEST_COMMANDS[-1]).exists():
        return bin_dir
    here = Path(__file__).resolve().parent
    python = shlex.quote(sys.executable)
    for sub in ("bin", "container-bin", "container-site"):
        (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(here / "guest_network.py", folder / "container-site" / "sitecustomize.py")
    script = shlex.quote(str(here / "guest_commands.py"))
    for name, arguments in CONTAINER_COMMANDS.items():
        _write_executable(
            folder / "container-bin" / name, f'#!/bin/sh\nexec {python} {arguments} "$@"\n'
        )
    for name in GUEST_COMMANDS:  # the last one written says the image is whole
        _write_executable(
            bin_dir / name,
            f'#!/bin/sh\nexec {python} -S {script} {shlex.quote(str(folder))} {name} "$@"\n',
        )
    return bin_dir
