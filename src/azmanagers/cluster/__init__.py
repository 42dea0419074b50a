"""Elastic Dask clusters on provider pools: ``addprocs`` and the machinery behind it.

What lives here: ``core.py`` (AzCluster, a distributed ``Cluster``: scale, adapt, waits, logs,
close), ``reconciler.py`` (the Reconciler: the loop and its bookkeeping, usable without an
AzCluster, e.g. on a head node), ``failures.py`` (failed instances, the replacement budget,
evictions and the errors they set), ``scaling.py`` (a new target checked against
``max_instances`` and the quota), ``pace.py`` (how often it lists the pool), ``policy.py``
(the pure ``decide``), ``gate.py`` (no provider call while throttled), ``deletes.py`` (instance
deletes; a refused one is sent again), ``latch.py`` (the error waits raise), ``hooks.py``
(the scheduler plugin: joins, departures, worker log records),
``scheduler.py`` (a TLS-only scheduler; HTTP only for a dashboard asked for, its address
checked first), ``guard.py`` (what a worker's certificate may ask), ``spec.py`` (the workers'
pool spec and payload, its boot script checked to fit), ``teardown.py`` (the pool delete at
close, loud when it fails; closing at exit), ``waits.py``, ``customenv.py`` and ``api.py``
(addprocs, rmprocs, workers, nworkers).

What it may import: ``azmanagers.providers`` (the Protocol, its dataclasses, ``tags``, ``boot``
and the registry; never a provider's own module), ``config``, ``state``, ``tls``, ``errors``,
and from ``agent`` only what the workers run (``LOG_TOPIC``, the log-forwarding worker
plugin); never ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "AzCluster":  # ``from azmanagers.cluster import AzCluster`` as before the package
        return importlib.import_module("azmanagers.cluster.core").AzCluster
    raise AttributeError(f"module 'azmanagers.cluster' has no attribute {name!r}")
