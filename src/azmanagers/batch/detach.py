"""``--detach``: a job's driver runs as a detached job on a VM of its own, so the caller may go."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from azmanagers.batch.api import prepare, resubmit
from azmanagers.batch.gangplan import cluster_workers
from azmanagers.batch.job import Job
from azmanagers.batch.model import Model
from azmanagers.batch.sweep import Sweep
from azmanagers.errors import BatchError
from azmanagers.storage.base import Grant, Storage

DETACHED_GRANT_TTL_S = 7 * 24 * 3600.0
"""How long the detached driver's storage credential lasts (a user-delegation key's limit)."""


def submit_detached(
    what: Model | Sweep,
    *,
    name: str,
    storage: str | Storage | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    vm_template: str = "local",
    base: str | Path | None = None,
) -> Job:
    """Stage the job here, then drive it from a detached VM; returns the job at once.

    The VM gets a storage credential scoped to the job and expiring after
    ``DETACHED_GRANT_TTL_S``, never the caller's; it makes the cluster from ``cluster`` (a
    template name) itself, and deletes itself when the job ends. ``batch.attach(name,
    storage=...)`` follows the job from anywhere.
    """
    from azmanagers.detached.api import addproc, rmproc, submit_call

    if cluster is not None and not isinstance(cluster, str):
        raise BatchError(
            "a detached job makes its own cluster: give cluster as a template name, not "
            f"a {type(cluster).__name__}."
        )
    # a gang model's cluster size is checked here, before anything is staged or started
    workers = cluster_workers(what.model if isinstance(what, Sweep) else what, cluster, workers)
    space, store, plan = prepare(what, name=name, storage=storage, cluster=cluster, base=base)
    grant = space.grant(store.prefix, ttl_s=DETACHED_GRANT_TTL_S, write=True)
    vm = addproc(vm_template)
    try:
        detached = submit_call(
            vm,
            drive_detached,
            (name, grant, cluster, workers),
            {},
            persist=False,
            job_name=f"batch {name}",
        )
    except BaseException:
        rmproc(vm)
        raise
    record = store.read_job()
    if record is not None:
        store.write_job(replace(record, driver=f"detached:{vm.name}/{detached.id}"))
    return Job(name, space, root=plan.root)


def drive_detached(name: str, grant: Grant, cluster: str | None, workers: int | None) -> str:
    """On the detached VM: drive the job from its records to the end; its final status.

    The grant is the job's space (made on it by ``submit_detached``): nothing else is reachable.
    """
    job = Job(name, grant.open())
    done = resubmit(
        job, only_failed=False, cluster=cluster, workers=workers, wait=True, grant=grant
    )
    return done.status().status
