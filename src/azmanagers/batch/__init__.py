"""Batch model runs: models, sweeps, YAML specs, staging, the runner on the worker, the job API.

Imports only from ``errors``, ``config``, ``storage``, ``state`` and the feature packages
``cluster`` (the Dask cluster the runs go to) and ``detached`` (``--detach``); never ``cli``.
The public names are imported lazily, so ``from azmanagers import batch`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Job": "azmanagers.batch.api",
    "MasterWorker": "azmanagers.batch.multinode",
    "Model": "azmanagers.batch.model",
    "MpiModel": "azmanagers.batch.multinode",
    "Output": "azmanagers.batch.model",
    "Package": "azmanagers.batch.model",
    "Sweep": "azmanagers.batch.sweep",
    "attach": "azmanagers.batch.api",
    "jobs": "azmanagers.batch.api",
    "listing": "azmanagers.batch.sweep",
    "load_spec": "azmanagers.batch.spec",
    "product": "azmanagers.batch.sweep",
    "rows": "azmanagers.batch.sweep",
    "submit": "azmanagers.batch.api",
    "submit_detached": "azmanagers.batch.detach",
    "zip": "azmanagers.batch.sweep",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'azmanagers.batch' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
