"""azmanagers: run Python code and executables on Azure VM scale sets (elastic Dask clusters)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AzCluster": "azmanagers.cluster",
    "AzManagersError": "azmanagers.errors",
    "ClusterClosedError": "azmanagers.errors",
    "ConfigError": "azmanagers.errors",
    "DetachedJob": "azmanagers.detached",
    "DetachedServiceError": "azmanagers.errors",
    "DetachedVM": "azmanagers.detached_vms",
    "InstanceFailedError": "azmanagers.errors",
    "JobFailedError": "azmanagers.errors",
    "JobNotFoundError": "azmanagers.errors",
    "ProviderError": "azmanagers.errors",
    "WaitTimeoutError": "azmanagers.errors",
    "addproc": "azmanagers.detached",
    "addprocs": "azmanagers.api",
    "build_nictemplate": "azmanagers.config.templates",
    "build_sstemplate": "azmanagers.config.templates",
    "build_vmtemplate": "azmanagers.config.templates",
    "clusters": "azmanagers.api",
    "detach": "azmanagers.detached",
    "detachat": "azmanagers.detached",
    "gc": "azmanagers.collect",
    "load_manifest": "azmanagers.config.manifest",
    "load_template_nic": "azmanagers.config.templates",
    "load_template_scaleset": "azmanagers.config.templates",
    "load_template_vm": "azmanagers.config.templates",
    "nworkers": "azmanagers.api",
    "nworkers_provisioned": "azmanagers.api",
    "rmproc": "azmanagers.detached",
    "rmprocs": "azmanagers.api",
    "save_template_nic": "azmanagers.config.templates",
    "save_template_scaleset": "azmanagers.config.templates",
    "save_template_vm": "azmanagers.config.templates",
    "variablebundle": "azmanagers.detached",
    "workers": "azmanagers.api",
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
    "ProviderError",
    "WaitTimeoutError",
    "addproc",
    "addprocs",
    "build_nictemplate",
    "build_sstemplate",
    "build_vmtemplate",
    "clusters",
    "detach",
    "detachat",
    "gc",
    "load_manifest",
    "load_template_nic",
    "load_template_scaleset",
    "load_template_vm",
    "nworkers",
    "nworkers_provisioned",
    "rmproc",
    "rmprocs",
    "save_template_nic",
    "save_template_scaleset",
    "save_template_vm",
    "variablebundle",
    "workers",
    "write_manifest",
]

if TYPE_CHECKING:
    from azmanagers.api import (
        addprocs,
        clusters,
        nworkers,
        nworkers_provisioned,
        rmprocs,
        workers,
    )
    from azmanagers.cluster import AzCluster
    from azmanagers.collect import gc
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
    from azmanagers.detached import (
        DetachedJob,
        addproc,
        detach,
        detachat,
        rmproc,
        variablebundle,
    )
    from azmanagers.detached_vms import DetachedVM
    from azmanagers.errors import (
        AzManagersError,
        ClusterClosedError,
        ConfigError,
        DetachedServiceError,
        InstanceFailedError,
        JobFailedError,
        JobNotFoundError,
        ProviderError,
        WaitTimeoutError,
    )


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
