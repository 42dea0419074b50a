"""What a cluster's workers boot with: the pool spec and the agent's payload."""

from __future__ import annotations

from collections.abc import Mapping

from azmanagers.config.settings import ClusterSettings
from azmanagers.providers import boot
from azmanagers.providers.base import BootSpec, PoolSpec
from azmanagers.tls import ClusterCredentials


def worker_pool_spec(
    pool: str,
    *,
    scheduler: str,
    credentials: ClusterCredentials,
    settings: ClusterSettings,
    tags: Mapping[str, str],
    template: Mapping[str, object],
    env: Mapping[str, str],
    requirements: str | None,
    setup: str | None = None,
) -> PoolSpec:
    """Return the spec of a pool whose instances run a Dask worker joining ``scheduler``.

    The payload carries this cluster's CA and worker key pair only, never the caller's own
    credentials; ``requirements`` (a custom environment) adds its build deadline; ``setup``
    is a script each node runs before its worker joins (a failure fails the instance). The boot
    script is rendered here once, so one that would not fit Azure's customData (a huge
    ``env``) is a ``ConfigError`` before the pool is created, on every provider.
    """
    payload: dict[str, object] = {
        "scheduler": scheduler,
        "tls": credentials.worker_payload(),
        "nthreads": settings.nthreads,
        "memory_limit": settings.memory_limit,
        "death_timeout_s": settings.death_timeout_s,
        "worker_host": settings.worker_host,
        "cluster": pool,
        "spot": settings.spot,
    }
    if setup:
        payload["setup"] = {"script": setup, "timeout_s": settings.setup_timeout_s}
    if requirements:
        payload["requirements"] = requirements
        payload["env_build_timeout_s"] = settings.env_build_timeout_s
    boot_spec = BootSpec(
        role="worker",
        payload=payload,
        env=env,
        bootstrap_requirement=settings.bootstrap_requirement,
        bootstrap_pip_args=settings.pip_args(),
    )
    boot.render(boot_spec)  # raises ConfigError if it is over the customData limit
    return PoolSpec(
        name=pool,
        boot=boot_spec,
        tags=tags,
        template=template,
        max_instances=settings.max_instances,
        priority=settings.priority(),
    )
