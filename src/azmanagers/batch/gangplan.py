"""What a multi-node job needs before it runs: its cluster's size and its workers' plan."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from azmanagers.batch.connect import DEFAULT_TEMPLATE, DEFAULT_WORKERS
from azmanagers.batch.model import Model
from azmanagers.batch.multinode import MasterWorker, MpiModel
from azmanagers.batch.plan import Plan
from azmanagers.batch.stage_sweep import staged_parts
from azmanagers.errors import ConfigError


def with_companion(plan: Plan) -> Plan:
    """``plan`` with its worker plan when its model is a ``MasterWorker`` (same job, prefix,
    session and staged inputs: ``stage_sweep`` staged the worker's with the master's)."""
    model = plan.sweep.model
    if not isinstance(model, MasterWorker):
        return plan
    shared, packages = staged_parts(model.worker, plan.refs)
    companion = replace(
        plan, sweep=model.worker_sweep(plan.sweep), shared=shared, packages=packages
    )
    return replace(plan, companion=companion)


def cluster_workers(model: Model, cluster: Any, workers: int | None) -> int | None:
    """The workers a job's own cluster gets: ``workers``, or for a gang model enough nodes.

    Only a cluster made for the job from a template (``cluster`` None or a template name)
    is sized here; an existing one (named, running, an ``AzCluster``, a ``Client``) is
    checked by the driver when a run is placed.

    Raises
    ------
    ConfigError
        When an ``MpiModel`` needs more nodes than ``workers`` or than the template allows.
    """
    if not isinstance(model, (MpiModel, MasterWorker)):
        return workers
    if not _made_here(cluster):
        _check_existing(model, cluster)
        return workers
    needs = model.nodes if isinstance(model, MpiModel) else model.workers + 1
    template = cluster or DEFAULT_TEMPLATE
    cores = os.cpu_count() or 1
    local = _provider(template) == "local"  # its process-VMs share this machine's cores
    mpi = model if isinstance(model, MpiModel) else None
    if mpi is not None and local and mpi.ranks_per_node > cores and not mpi.oversubscribe:
        raise ConfigError(
            f"MpiModel {mpi.name!r}: ranks_per_node={mpi.ranks_per_node} is more than "
            f"the {cores} cores of this machine, where template {template!r} runs its "
            "nodes: lower it, or pass oversubscribe=True."
        )
    most = _max_instances(template)
    what = f"{type(model).__name__} {model.name!r}"
    if isinstance(model, MpiModel) and workers is not None and workers < needs:
        raise ConfigError(
            f"{what} needs {needs} nodes per run; the cluster gets {workers} workers: pass "
            f"workers={needs} or more (--workers {needs}), or give the model fewer nodes."
        )
    if workers is None and needs > most:
        fix = f"give it at most {most} nodes"
        if isinstance(model, MasterWorker):
            fix = f"pass workers={most} (--workers {most}) to start that many nodes"
        raise ConfigError(
            f"{what} needs {needs} nodes; template {template!r} allows at most {most} "
            f"(max_instances): raise max_instances in the template, or {fix}."
        )
    return max(DEFAULT_WORKERS, needs) if workers is None else workers


def _check_existing(model: Model, cluster: Any) -> None:
    """An MPI model needing more nodes than a running cluster may ever have is refused now
    (a cluster that may still grow to ``nodes`` is waited for, up to ``node_wait``)."""
    from azmanagers.cluster.core import AzCluster

    if isinstance(model, MpiModel) and isinstance(cluster, AzCluster):
        most = cluster.settings.max_instances
        if model.nodes > most:
            raise ConfigError(
                f"MpiModel {model.name!r} needs {model.nodes} nodes; cluster {cluster.name!r} "
                f"may have at most {most} (max_instances): give the model at most {most} nodes, "
                "or run it on a cluster that allows more."
            )


def _made_here(cluster: Any) -> bool:
    from azmanagers.batch.connect import _named
    from azmanagers.cluster.api import clusters

    if cluster is not None and not isinstance(cluster, str):
        return False
    name = cluster or DEFAULT_TEMPLATE
    return _named(name) is None and clusters().get(name) is None


def _provider(template: str) -> str:
    from azmanagers.config.templates import load_template_scaleset, template_provider

    return str(template_provider(load_template_scaleset(template)))


def _max_instances(template: str) -> int:
    from azmanagers.config.settings import resolve
    from azmanagers.config.templates import load_template_scaleset, template_provider

    tmpl = load_template_scaleset(template)
    provider = template_provider(tmpl)
    return resolve({**tmpl, "provider": provider}, {}, template_name=template).max_instances
