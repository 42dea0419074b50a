"""Detached VMs and jobs on the caller's side: api, job, vms, client, and wire (shared with the VM).

``wire`` (routes and records) is also imported by the service on the VM, so this package's
import is light: the API's names load on first use. May import ``providers`` (through its
registry and Protocol), ``state``, ``config``, ``tls``, ``errors`` and ``_version``; never
``cluster``, ``cli`` or a provider's own modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = (
    "DetachedJob",
    "addproc",
    "detach",
    "detachat",
    "job_records",
    "list_jobs",
    "rmproc",
    "variablebundle",
)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("azmanagers.detached.api"), name)
    if name == "DetachedVM":  # where it was found before the package existed
        return importlib.import_module("azmanagers.detached.vms").DetachedVM
    raise AttributeError(f"module 'azmanagers.detached' has no attribute {name!r}")
