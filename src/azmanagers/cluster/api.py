"""The module-level cluster API: ``addprocs``, ``rmprocs``, ``workers``, ``nworkers``."""

from __future__ import annotations

import difflib
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from azmanagers.cluster.core import AzCluster
from azmanagers.cluster.customenv import requirements_for
from azmanagers.cluster.waits import ProgressCallback, check_count, check_timeout
from azmanagers.config.settings import ClusterSettings, check_env, resolve
from azmanagers.config.templates import load_template_scaleset, template_provider
from azmanagers.errors import AzManagersError, ConfigError
from azmanagers.providers import get_provider

logger = logging.getLogger("azmanagers")

_clusters: dict[str, AzCluster] = {}
_clients: dict[str, Any] = {}
_lock = threading.RLock()
_ADDPROCS_KEYWORDS = (
    "waitfor",
    "timeout",
    "customenv",
    "env",
    "progress",
    *ClusterSettings.__dataclass_fields__,
)


def _default_worker_log_handler() -> None:
    """Print worker log records when the caller has not configured logging itself."""
    wlog = logging.getLogger("azmanagers.worker")
    if wlog.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    wlog.addHandler(handler)
    wlog.setLevel(logging.INFO)


def addprocs(
    template: str,
    n: int,
    *,
    waitfor: bool = False,
    timeout: float | None = None,
    customenv: bool | str | Sequence[str] = False,
    env: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    **settings: Any,
) -> AzCluster:
    """Create the cluster for ``template``, or grow it by ``n`` workers.

    Returns at once (workers join as they boot) unless ``waitfor``. The first call for a
    template also creates a Dask ``Client`` for it and makes it the default, so
    ``client.submit`` and ``dask.compute`` use the cluster.

    Parameters
    ----------
    template
        A scale-set template name (``"local"`` is built in).
    n
        How many workers to add (>= 1).
    waitfor
        Block until the cluster has all its workers.
    timeout
        With ``waitfor``: raise ``WaitTimeoutError`` after this many seconds.
    customenv
        Ship an environment: ``True`` for the caller's installed packages, a path to a
        requirements or lock file, or a list of requirement lines. Workers build (or reuse)
        a virtualenv keyed by its hash before they start.
    env
        Environment variables set on every instance.
    progress
        Called as ``progress(joined, wanted)`` while waiting.
    **settings
        Overrides of the template's settings, e.g. ``join_timeout_s``, ``max_replacements``,
        ``nthreads``, ``death_timeout_s``, ``max_instances``.

    Raises
    ------
    ConfigError
        A bad template, count or keyword.
    WaitTimeoutError, InstanceFailedError
        With ``waitfor``: not all workers joined in time, or instances kept failing.
    """
    for key in settings:
        if key not in ClusterSettings.__dataclass_fields__:
            hint = difflib.get_close_matches(key, _ADDPROCS_KEYWORDS, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"addprocs() got an unknown keyword {key!r}.{extra} "
                f"Known keywords: {', '.join(sorted(_ADDPROCS_KEYWORDS))}."
            )
    check_count(n)
    if timeout is not None:
        check_timeout(timeout)
    if env is not None:
        if not isinstance(env, Mapping):
            raise ConfigError(
                f"env must map variable names to string values (e.g. {{'MY_SETTING': '1'}}), "
                f"got a {type(env).__name__}."
            )
        check_env(env)
    with _lock:
        cluster = _clusters.get(template)
        if cluster is not None and cluster.status.name in ("closing", "closed"):
            _forget(template)
            cluster = None
        made_here = cluster is None
        if cluster is None:
            tmpl = load_template_scaleset(template)
            resolved = resolve(
                {**tmpl, "provider": template_provider(tmpl)}, settings, template_name=template
            )
            if n > resolved.max_instances:
                raise ConfigError(
                    f"template {template!r} allows at most {resolved.max_instances} instances "
                    f"(asked for {n}); raise max_instances in the template."
                )
            requirements = requirements_for(customenv)
            provider = get_provider(resolved.provider, tmpl)
            provider.check_reachable(resolved.scheduler_host)
            _default_worker_log_handler()
            cluster = AzCluster(
                template, provider, resolved, requirements=requirements, env=env, template=tmpl
            )
            _clusters[template] = cluster
            from distributed import Client

            _clients[template] = Client(cluster, security=cluster.security, set_as_default=True)
        elif customenv or env or settings:
            raise ConfigError(
                f"the cluster for template {template!r} already exists; customenv, env and "
                "settings apply only when it is created. Call rmprocs() first to start anew."
            )
        try:
            target = cluster.grow(n)
        except Exception as exc:
            # Only a cluster made by this very call is closed: an existing one (even at
            # target 0 after scale(0)) keeps its scheduler, Client and data.
            if made_here:
                _forget(template)
                try:
                    cluster.close()
                except AzManagersError as close_error:  # a pool left behind: say so
                    raise close_error from exc
            raise
    if waitfor:
        cluster.wait_for_workers(target, timeout=timeout, progress=progress)
    return cluster


def _forget(template: str) -> None:
    _clusters.pop(template, None)
    client = _clients.pop(template, None)
    if client is not None:
        client.close()


def _only_cluster(template: str | None) -> AzCluster:
    with _lock:
        if template is not None:
            if template not in _clusters:
                raise ConfigError(
                    f"no cluster for template {template!r}; running clusters: "
                    f"{', '.join(sorted(_clusters)) or 'none'}."
                )
            return _clusters[template]
        if not _clusters:
            raise ConfigError("no cluster is running; start one with addprocs(template, n).")
        if len(_clusters) > 1:
            raise ConfigError(
                f"several clusters are running ({', '.join(sorted(_clusters))}); "
                "pass template=... to say which."
            )
        return next(iter(_clusters.values()))


def clusters() -> dict[str, AzCluster]:
    """Return the running clusters by template name."""
    with _lock:
        return dict(_clusters)


def rmprocs(
    workers: int | str | Sequence[str] | None = None,
    *,
    template: str | None = None,
) -> None:
    """Remove workers: all of them (closing the cluster), a count, or named workers.

    Parameters
    ----------
    workers
        ``None`` removes every worker and closes the cluster; an int removes that many
        (the idlest first); names or addresses remove those workers.
    template
        Which cluster, when several run.
    """
    cluster = _only_cluster(template)
    if workers is None:
        with _lock:
            for name, running in list(_clusters.items()):
                if running is cluster:
                    _forget(name)
        cluster.close()
        return
    if isinstance(workers, int) and not isinstance(workers, bool):
        check_count(workers)
        names = cluster.sync(_pick_workers, cluster, workers)
        if len(names) < workers:
            raise ConfigError(
                f"cannot remove {workers} workers: cluster {cluster.name} has {len(names)}."
            )
        cluster.remove_workers(names)
        return
    if isinstance(workers, str):
        cluster.remove_workers([workers])
    elif isinstance(workers, (list, tuple, set)) and all(isinstance(w, str) for w in workers):
        cluster.remove_workers(list(workers))
    else:
        raise ConfigError(
            f"rmprocs() takes nothing (all), a count, or worker names; got {workers!r}."
        )


async def _pick_workers(cluster: AzCluster, n: int) -> list[str]:
    if cluster.scheduler is None:
        return []
    names: list[str] = list(cluster.scheduler.workers_to_close(n=n, attribute="name"))
    if len(names) < n:
        rest = [str(ws.name) for ws in cluster.scheduler.workers.values() if ws.name not in names]
        names += rest[: n - len(names)]
    return names[:n]


def workers(template: str | None = None) -> list[str]:
    """Return the names of the joined workers."""
    return _only_cluster(template).worker_names()


def nworkers(template: str | None = None) -> int:
    """Return how many workers have joined (0 when no cluster runs)."""
    with _lock:
        if template is None and not _clusters:
            return 0
    return _only_cluster(template).nworkers()


def nworkers_provisioned(template: str | None = None) -> int:
    """Return how many instances exist and are not being deleted (0 when no cluster runs)."""
    with _lock:
        if template is None and not _clusters:
            return 0
    return _only_cluster(template).nworkers_provisioned()
