"""A stock image for emulated VMs: this machine's Python and packages, without azmanagers.

A VM booted from a market image (``publisher:offer:sku:version``) gets it, so its boot script
must install azmanagers into a virtualenv, as on a real stock image. To stay offline, the
image already holds azmanagers' dependencies (seen through ``PYTHONPATH``); the caller points
``bootstrap_pip_args`` at a folder holding an azmanagers wheel.
"""

from __future__ import annotations

import os
import shlex
import site
import sys
from dataclasses import dataclass
from pathlib import Path

_HIDDEN_PREFIXES = ("azmanagers", "__editable__")


@dataclass(frozen=True)
class StockImage:
    """The interpreter and module path an emulated stock-image VM boots with."""

    python: Path
    packages: Path

    def environment(self) -> dict[str, str]:
        """Return the variables that make a process-VM boot from this image."""
        return {"AZMANAGERS_PYTHON": str(self.python), "PYTHONPATH": str(self.packages)}


def _site_folders() -> list[Path]:
    folders = [Path(p) for p in site.getsitepackages()]
    user = Path(site.getusersitepackages())
    if site.ENABLE_USER_SITE and user.is_dir():
        folders.append(user)
    return [folder for folder in folders if folder.is_dir()]


def prepare(folder: Path) -> StockImage:
    """Make (once) the image in ``folder``: a python3 that ignores site-packages, and a view
    of site-packages without azmanagers (symbolic links; ``.pth`` files are left out)."""
    python = folder / "bin" / "python3"
    packages = folder / "site-packages"
    if python.exists():
        return StockImage(python, packages)
    packages.mkdir(parents=True, exist_ok=True, mode=0o700)
    for source in _site_folders():
        for entry in sorted(source.iterdir()):
            name = entry.name
            if name.lower().startswith(_HIDDEN_PREFIXES) or name.endswith(".pth"):
                continue
            link = packages / name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(entry)
    python.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = python.with_suffix(".partial")
    # -S: no site-packages of this machine (they hold azmanagers); PYTHONPATH gives the rest.
    partial.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    partial.chmod(0o755)
    os.replace(partial, python)
    return StockImage(python, packages)
