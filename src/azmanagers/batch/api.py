"""The batch API: ``submit`` a model or sweep, ``attach`` to a job, list ``jobs``."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from azmanagers.batch.connect import (
    DEFAULT_TEMPLATE,
    DEFAULT_WORKERS,
    Connection,
    check_reach,
    connect,
    provider_of,
)
from azmanagers.batch.driver import Driver, Progress
from azmanagers.batch.gangplan import cluster_workers, with_companion
from azmanagers.batch.job import DRIVING, Job, JobStatus, _Local, driver_alive
from azmanagers.batch.model import Model
from azmanagers.batch.multinode import MasterWorker, MpiModel
from azmanagers.batch.plan import Plan, TakenOverError, new_session
from azmanagers.batch.records import JobRecord, JobStore
from azmanagers.batch.stage_sweep import stage_sweep, staged_parts
from azmanagers.batch.staging import InputRef
from azmanagers.batch.sweep import Sweep
from azmanagers.config.paths import home
from azmanagers.errors import AzManagersError, BatchError, BatchJobNotFoundError, ConfigError
from azmanagers.storage import open_storage
from azmanagers.storage.base import Grant, Storage
from azmanagers.storage.spaces import discard_if_empty, job_names, job_space

logger = logging.getLogger("azmanagers.batch")

TASKS_PER_WORKER = 4
"""Tasks kept queued per worker: enough to keep it busy, few enough to stay lazy."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def default_storage_url() -> str:
    """Where jobs go without ``storage``: a folder under ``AZMANAGERS_HOME``."""
    return (home() / "batch").as_uri()


def check_job_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"job name {name!r} is not valid: use 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. 'ptm-2026')."
        )
    return name


def open_job_storage(storage: str | Storage | None) -> Storage:
    """The storage named by a URL (or the default), checked reachable with one call."""
    if storage is not None and not isinstance(storage, str):
        return storage
    opened = open_storage(storage or default_storage_url())
    opened.check()
    return opened


def attach(name: str, *, storage: str | Storage | None = None) -> Job:
    """The job ``name`` in ``storage``, from any process or machine that can read it."""
    root = open_job_storage(storage)
    job = Job(name, job_space(root, check_job_name(name), create=False), root=root.url)
    job.record()
    return job


def jobs(storage: str | Storage | None = None) -> list[JobStatus]:
    """Every job in ``storage`` with its status."""
    opened = open_job_storage(storage)
    found = []
    for name in job_names(opened):
        if not _NAME.fullmatch(name):
            continue
        try:
            space = job_space(opened, name, create=False)
            found.append(Job(name, space, root=opened.url).status())
        except BatchJobNotFoundError:
            continue  # a space without a record yet (being staged, or refused while staging)
        except AzManagersError as exc:
            logger.warning("skipping %s: %s", name, exc)
    return found


def submit(
    what: Model | Sweep,
    *,
    name: str,
    storage: str | Storage | None = None,
    cluster: Any = None,
    workers: int | None = None,
    wait: bool = False,
    timeout: float | None = None,
    progress: Progress | None = None,
    base: str | Path | None = None,
) -> Job:
    """Stage a model's (or sweep's) inputs and run it on a cluster; returns the ``Job``.

    Parameters
    ----------
    what
        A ``Model`` (one run) or a ``Sweep`` (``model.sweep(...)``).
    name
        The job's name in ``storage``. Submitting the same sweep under the same name again
        resumes it: runs that succeeded are skipped.
    storage
        ``file:///folder`` or ``az://container[/prefix]``; default a folder under
        ``AZMANAGERS_HOME``.
    cluster
        A scale-set template name (a cluster is made with ``workers`` workers and closed when
        the job ends, unless one for that template is running), an ``AzCluster``, or a Dask
        ``Client``. Default: the ``local`` template.
    workers
        How many workers to start when a cluster is made (default 2; an ``MpiModel``'s
        ``nodes`` or more, a ``MasterWorker``'s ``workers + 1``).
    wait
        Block until the job ends (``timeout`` seconds at most).
    progress
        Called as ``progress(counts by state, total)`` as runs change state.
    base
        The folder relative input paths are relative to (default: the current folder).
    """
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a whole number >= 1, got {workers!r}.")
    workers = cluster_workers(what.model if isinstance(what, Sweep) else what, cluster, workers)
    space, store, plan = prepare(what, name=name, storage=storage, cluster=cluster, base=base)
    try:
        connection = connect(cluster, workers, space)
    except BaseException as exc:  # Ctrl-C or a cluster that did not start: no run started
        _record_unstarted(store, exc)
        raise
    return _start(
        space,
        store,
        plan,
        connection,
        only_failed=False,
        workers=workers,
        wait=wait,
        timeout=timeout,
        progress=progress,
    )


def prepare(
    what: Model | Sweep,
    *,
    name: str,
    storage: str | Storage | None,
    cluster: Any,
    base: str | Path | None,
) -> tuple[Storage, JobStore, Plan]:
    """Check everything, stage the inputs and write the job record; nothing runs yet.

    Returns the job's space (where everything of the job lives), its store and its plan.
    """
    sweep = what if isinstance(what, Sweep) else _single(what)
    check_job_name(name)
    opened = open_job_storage(storage)
    existing = JobStore(job_space(opened, name, create=False), name).read_job()
    if existing is not None:
        _check_not_running(existing)
    check_reach(opened, provider_of(cluster))
    space = job_space(opened, name, create=True)
    store = JobStore(space, name)
    try:
        refs, shared, packages = stage_sweep(
            space, opened, store.prefix, sweep, Path(base or Path.cwd())
        )
    except BaseException:
        if existing is None:
            discard_if_empty(space)
        raise
    digest = job_digest(sweep, refs)
    if existing is not None and existing.digest != digest:
        raise ConfigError(
            f"job {name!r} in {space.url} was submitted with a different model, "
            "sweep or input contents; use another job name (or another storage) for this one, "
            "or submit the same definition and inputs to resume it."
        )
    session = new_session()
    record = JobRecord(
        name=name,
        session=session,
        digest=digest,
        definition=sweep.to_dict(),
        total=len(sweep),
        cluster=cluster
        if isinstance(cluster, str)
        else (DEFAULT_TEMPLATE if cluster is None else type(cluster).__name__),
        inputs={k: v.to_dict() for k, v in refs.items()},
        created=existing.created if existing else time.time(),
    )
    store.write_job(record)
    plan = Plan(name, store.prefix, sweep, refs, shared, packages, session, root=opened.url)
    return space, store, with_companion(plan)


def job_digest(sweep: Sweep, refs: Mapping[str, InputRef]) -> str:
    """What a job is: its definition and the content of every input (so editing an input and
    submitting again is a different job, not a resumption mixing old and new results)."""
    contents = sorted((source, ref.sha256) for source, ref in refs.items())
    return hashlib.sha256(
        json.dumps([sweep.digest(), contents], separators=(",", ":")).encode()
    ).hexdigest()


def resubmit(
    job: Job,
    *,
    only_failed: bool,
    cluster: Any = None,
    workers: int | None = None,
    wait: bool = False,
    timeout: float | None = None,
    progress: Progress | None = None,
    grant: Grant | None = None,
) -> Job:
    """Run a job's failed (or unfinished) runs again from its records: no local files needed.

    ``grant``: when this process holds only a grant for the job's storage (a detached
    driver), the workers get the same grant.
    """
    record = job.record()
    if driver_alive(record):
        raise BatchError(
            f"job {job.name!r} is still running (driver {record.driver}); wait for it or cancel "
            "it before retrying."
        )
    # a job prepared for a driver elsewhere (--detach) keeps the session a cancel names
    session = record.session if record.status == "submitted" and record.session else None
    sweep = Sweep.from_dict(record.definition)
    refs = {k: InputRef.from_dict(v) for k, v in record.inputs.items()}
    shared, packages = staged_parts(sweep.model, refs)
    workers = cluster_workers(sweep.model, cluster, workers)
    connection = connect(cluster, workers, job.storage)
    try:
        job.store.write_job(record.with_counts(record.counts, "running"))
    except BaseException:
        connection.close()
        raise
    plan = Plan(
        job.name, job.store.prefix, sweep, refs, shared, packages, session or "", root=job.root
    )
    return _start(
        job.storage,
        job.store,
        with_companion(plan),
        connection,
        only_failed=only_failed,
        workers=workers,
        wait=wait,
        timeout=timeout,
        progress=progress,
        grant=grant,
    )


def _start(
    storage: Storage,
    store: JobStore,
    plan: Plan,
    connection: Connection,
    *,
    only_failed: bool,
    workers: int | None,
    wait: bool,
    timeout: float | None,
    progress: Progress | None,
    grant: Grant | None = None,
) -> Job:
    driving: type[Driver] = Driver
    if isinstance(plan.sweep.model, (MpiModel, MasterWorker)):  # gangs of nodes per run
        from azmanagers.batch.gangs import GangDriver

        driving = GangDriver
    driver = driving(
        connection.client,
        storage,
        store,
        plan,
        max_in_flight=TASKS_PER_WORKER * (workers or DEFAULT_WORKERS),
        only_failed=only_failed,
        progress=progress,
        grant=grant,
        session=plan.session or None,
    )
    local: _Local

    def drive() -> None:
        DRIVING[plan.job] = driver
        try:
            driver.run()
        except TakenOverError as exc:
            local.error.append(exc)
        except BaseException as exc:
            logger.error("the driver of job %s failed: %r", plan.job, exc)
            _record_crash(store, driver, exc)  # before waiters learn of it (and may exit)
            local.error.append(exc)
        finally:
            try:
                connection.close()
            finally:
                DRIVING.pop(plan.job, None)
                local.finished.set()

    thread = threading.Thread(target=drive, name=f"azm-batch-{plan.job}", daemon=True)
    local = _Local(driver, thread)
    job = Job(plan.job, storage, local=local, root=plan.root)
    thread.start()
    if wait:
        job.wait(timeout)
    return job


@atexit.register
def _say_what_stops() -> None:
    """At exit, name the jobs whose driver (a thread of this process) is about to stop."""
    for name, driver in sorted(DRIVING.items()):
        if driver.cancelling:
            sys.stderr.write(
                f"azmanagers: job {name!r} stops with this process before its cancel ended; "
                f"runs that had not reported were killed with their workers (`azm batch status "
                f"{name}` shows the job stopped).\n"
            )
            continue
        sys.stderr.write(
            f"azmanagers: job {name!r} was still running and stops with this process (its runs "
            f"are killed); `azm batch retry {name} --unfinished [--storage URL]` resumes it. "
            "Call job.wait() before leaving, or use batch.submit_detached (`azm batch run "
            "--detach`) to leave it running.\n"
        )


def _record_unstarted(store: JobStore, exc: BaseException) -> None:
    """Say in the job record that it stopped before its driver started (so it is not left
    ``submitted`` for good)."""
    why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"its cluster failed: {exc}"
    try:
        record = store.read_job()
        if record is not None and record.status == "submitted":
            store.write_job(
                replace(
                    record.with_counts(record.counts, "stopped"),
                    message=f"{why} before any run started; submit it again to run it",
                )
            )
    except AzManagersError as exc2:
        logger.warning("could not record that job %s stopped: %s", store.name, exc2)


def _record_crash(store: JobStore, driver: Driver, exc: BaseException) -> None:
    """Say in the job record that its driver failed (unless another driver owns it now)."""
    try:
        record = store.read_job()
        if record is not None and record.session == driver.session:
            store.write_job(
                replace(
                    record.with_counts(driver.snapshot(), "failed"),
                    message=f"the driver failed: {exc!r}; submit the job again to resume it",
                )
            )
    except AzManagersError as again:
        logger.error("could not record the driver's failure: %s", again)


def _single(model: Model) -> Sweep:
    if not isinstance(model, Model):
        raise ConfigError(
            f"submit() takes a batch.Model or a Sweep (model.sweep(...)), not "
            f"{type(model).__name__}."
        )
    return model.sweep()


def _check_not_running(existing: JobRecord) -> None:
    if driver_alive(existing):
        raise BatchError(
            f"job {existing.name!r} is running (driver {existing.driver}); attach to it with "
            f"batch.attach({existing.name!r}) or wait until it ends."
        )
