"""azmanagers: run Python code and executables on Azure VM scale sets (elastic Dask clusters).

The public API, imported lazily from the feature packages (``cluster``, ``detached``), the
seams (``config``, ``providers``) and ``errors``; importing ``azmanagers`` itself imports none
of them. Layers, top to bottom (a package imports only from layers below it, or its own):
``cli`` -> ``cluster``, ``detached`` -> ``providers``, ``state``, ``config``, ``tls`` ->
``errors``, ``_version``. ``agent`` runs on a VM and imports only what a VM needs; ``emulator``
is a test double of Azure that the provider never imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from azmanagers._version import __version__ as __version__

_EXPORTS = {
    "AzCluster": "azmanagers.cluster.core",
    "AzManagersError": "azmanagers.errors",
    "ClusterClosedError": "azmanagers.errors",
    "ConfigError": "azmanagers.errors",
    "DetachedJob": "azmanagers.detached.job",
    "DetachedServiceError": "azmanagers.errors",
    "DetachedVM": "azmanagers.detached.vms",
    "InstanceFailedError": "azmanagers.errors",
    "JobFailedError": "azmanagers.errors",
    "JobNotFoundError": "azmanagers.errors",
    "MpiCallError": "azmanagers.errors",
    "ProviderError": "azmanagers.errors",
    "WaitTimeoutError": "azmanagers.errors",
    "addproc": "azmanagers.detached.api",
    "addprocs": "azmanagers.cluster.api",
    "build_nictemplate": "azmanagers.config.templates",
    "build_sstemplate": "azmanagers.config.templates",
    "build_vmtemplate": "azmanagers.config.templates",
    "clusters": "azmanagers.cluster.api",
    "connect": "azmanagers.named.handle",
    "detach": "azmanagers.detached.api",
    "detachat": "azmanagers.detached.api",
    "gc": "azmanagers.providers.gc",
    "load_manifest": "azmanagers.config.manifest",
    "load_template_nic": "azmanagers.config.templates",
    "load_template_scaleset": "azmanagers.config.templates",
    "load_template_vm": "azmanagers.config.templates",
    "mpi_call": "azmanagers.cluster.mpi",
    "named_cluster": "azmanagers.named.handle",
    "named_clusters": "azmanagers.named.handle",
    "nworkers": "azmanagers.cluster.api",
    "nworkers_provisioned": "azmanagers.cluster.api",
    "rmproc": "azmanagers.detached.api",
    "rmprocs": "azmanagers.cluster.api",
    "save_template_nic": "azmanagers.config.templates",
    "save_template_scaleset": "azmanagers.config.templates",
    "save_template_vm": "azmanagers.config.templates",
    "start_cluster": "azmanagers.named.start",
    "variablebundle": "azmanagers.detached.api",
    "workers": "azmanagers.cluster.api",
    "write_manifest": "azmanagers.config.manifest",
}

__all__ = [
    "AzCluster",
    "AzManagersError",
    "ClusterClosedError",
    "ConfigError",
    "DetachedJob",
    "DetachedServiceError",
    "DetachedVM",
    "InstanceFailedError",
    "JobFailedError",
    "JobNotFoundError",
    "MpiCallError",
    "ProviderError",
    "WaitTimeoutError",
    "addproc",
    "addprocs",
    "build_nictemplate",
    "build_sstemplate",
    "build_vmtemplate",
    "clusters",
    "connect",
    "detach",
    "detachat",
    "gc",
    "load_manifest",
    "load_template_nic",
    "load_template_scaleset",
    "load_template_vm",
    "mpi_call",
    "named_cluster",
    "named_clusters",
    "nworkers",
    "nworkers_provisioned",
    "rmproc",
    "rmprocs",
    "save_template_nic",
    "save_template_scaleset",
    "save_template_vm",
    "start_cluster",
    "variablebundle",
    "workers",
    "write_manifest",
]

if TYPE_CHECKING:
    from azmanagers.cluster.api import (
        addprocs,
        clusters,
        nworkers,
        nworkers_provisioned,
        rmprocs,
        workers,
    )
    from azmanagers.cluster.core import AzCluster
    from azmanagers.cluster.mpi import mpi_call
    from azmanagers.config.manifest import load_manifest, write_manifest
    from azmanagers.config.templates import (
        build_nictemplate,
        build_sstemplate,
        build_vmtemplate,
        load_template_nic,
        load_template_scaleset,
        load_template_vm,
        save_template_nic,
        save_template_scaleset,
        save_template_vm,
    )
    from azmanagers.detached.api import (
        addproc,
        detach,
        detachat,
        rmproc,
        variablebundle,
    )
    from azmanagers.detached.job import DetachedJob
    from azmanagers.detached.vms import DetachedVM
    from azmanagers.errors import (
        AzManagersError,
        ClusterClosedError,
        ConfigError,
        DetachedServiceError,
        InstanceFailedError,
        JobFailedError,
        JobNotFoundError,
        MpiCallError,
        ProviderError,
        WaitTimeoutError,
    )
    from azmanagers.named.handle import connect, named_cluster, named_clusters
    from azmanagers.named.start import start_cluster
    from azmanagers.providers.gc import gc


def __getattr__(name: str) -> Any:
    """Import public names lazily, so the agent and ``azm --help`` start fast."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'azmanagers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
