"""Where a job's runs go: a named cluster, a template's cluster, an AzCluster or a Client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azmanagers.errors import ConfigError
from azmanagers.storage.base import Storage

if TYPE_CHECKING:
    from azmanagers.named.handle import NamedCluster

DEFAULT_TEMPLATE = "local"
"""The scale-set template a job's cluster is made from when none is named."""
DEFAULT_WORKERS = 2
"""Workers started for a job's own cluster when ``workers`` is not given."""


@dataclass(frozen=True)
class Connection:
    """A Dask client for the job's runs, what it is, and how to let go of it."""

    client: Any
    description: str
    provider: str
    close: Callable[[], None]


def connect(cluster: Any, workers: int | None, storage: Storage) -> Connection:
    from distributed import Client

    from azmanagers.cluster.api import addprocs, clusters, rmprocs
    from azmanagers.cluster.core import AzCluster

    if isinstance(cluster, Client):
        return Connection(cluster, "a dask Client", "unknown", lambda: None)
    if isinstance(cluster, AzCluster):
        check_reach(storage, cluster.provider.name)
        client = Client(cluster, security=cluster.security, set_as_default=False)
        return Connection(client, cluster.template_name, cluster.provider.name, client.close)
    template = DEFAULT_TEMPLATE if cluster is None else cluster
    if not isinstance(template, str):
        raise ConfigError(
            "cluster must be a named cluster, a template name, an AzCluster or a dask Client, "
            f"not {type(cluster).__name__}."
        )
    named = _named(template)
    if named is not None:
        return _connect_named(named, workers, storage)
    running = clusters().get(template)
    if running is not None:
        return connect(running, workers, storage)
    made = addprocs(template, workers or DEFAULT_WORKERS)
    client = Client(made, security=made.security, set_as_default=False)
    # On a cluster of its own a lost worker fails the task at once (KilledWorker), so the
    # driver requeues the run visibly (a new attempt, counted) instead of Dask re-running it
    # unseen; a cluster shared with other work keeps Dask's default.
    client.run_on_scheduler(_no_silent_reruns)

    def close() -> None:
        client.close()
        if clusters().get(template) is made:  # not already closed by its owner
            rmprocs(template=template)

    return Connection(client, template, made.provider.name, close)


def _named(name: str) -> NamedCluster | None:
    """The named cluster ``name`` when this machine records one (else None)."""
    from azmanagers.named.handle import STORE, NamedCluster, load_record

    if not STORE.exists(name):
        return None
    return NamedCluster(load_record(name))


def _connect_named(named: NamedCluster, workers: int | None, storage: Storage) -> Connection:
    """A client of a named cluster; ``workers`` grows it to at least that many nodes (it is
    not shrunk afterwards: the cluster is shared and outlives the job)."""
    check_reach(storage, named.record.provider)
    if workers is not None and named.status().target < workers:
        named.resize(workers)
    client = named.client(set_as_default=False)

    def close() -> None:
        client.close()
        named.close()

    return Connection(client, f"named cluster {named.name}", named.record.provider, close)


def _no_silent_reruns(dask_scheduler: Any) -> None:
    dask_scheduler.allowed_failures = 0


def provider_of(cluster: Any) -> str:
    """The provider a cluster argument runs on, known before anything starts."""
    from azmanagers.cluster.core import AzCluster
    from azmanagers.config.templates import load_template_scaleset, template_provider

    if isinstance(cluster, AzCluster):
        return str(cluster.provider.name)
    if isinstance(cluster, str) and (named := _named(cluster)) is not None:
        return str(named.record.provider)
    if cluster is None or isinstance(cluster, str):
        return template_provider(load_template_scaleset(cluster or DEFAULT_TEMPLATE))
    return "unknown"


def check_reach(storage: Storage, provider: str) -> None:
    if provider not in ("local", "unknown") and storage.url.startswith("file://"):
        raise ConfigError(
            f"storage {storage.url} is a folder on this machine, which workers on {provider} "
            "cannot reach; use Blob storage (az://container/prefix)."
        )
