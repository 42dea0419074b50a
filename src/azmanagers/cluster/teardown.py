"""Closing clusters: the pool delete (a short throttle waited out, a long one loud), at exit."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import logging
import time
import weakref
from typing import TYPE_CHECKING

from azmanagers.cluster.gate import THROTTLE_MIN_PAUSE_S
from azmanagers.errors import AzManagersError, ProviderError, ThrottledError
from azmanagers.providers.base import Provider

if TYPE_CHECKING:
    from distributed.deploy.cluster import Cluster

    from azmanagers.cluster.reconciler import Reconciler

logger = logging.getLogger("azmanagers.cluster")

DELETE_DEADLINE_S = 60.0
"""How long close keeps retrying a throttled pool delete before it gives up and says so."""
CLOSE_WAIT_S = 60.0
"""How long close lets the reconciler finish its current cycle."""
EXIT_CLOSE_TIMEOUT_S = 30.0
LIVE_CLUSTERS: weakref.WeakSet[Cluster] = weakref.WeakSet()
"""The clusters not yet closed: closed (their pools deleted) when the interpreter exits."""


async def stop_and_delete(
    reconciler: Reconciler, task: asyncio.Task[None] | None
) -> ProviderError | None:
    """Stop ``reconciler`` (running as ``task``), then delete its pool.

    Returns the error that left the pool behind (logged here; the caller raises it once
    everything local is closed), or None when the pool is gone.
    """
    if task is not None:
        # Let the current cycle finish (it may be starting instances), then stop.
        reconciler.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT_S)
        except (asyncio.TimeoutError, Exception):
            task.cancel()
    try:
        await delete_pool(reconciler.provider, reconciler.pool, reconciler.name)
    except ProviderError as exc:
        logger.error("%s", exc)
        return exc
    return None


async def delete_pool(provider: Provider, pool: str, cluster: str) -> None:
    """Delete ``pool`` (tried even while throttled: left behind, it would keep billing).

    A ``ThrottledError`` whose Retry-After ends within ``DELETE_DEADLINE_S`` is waited out
    and the delete tried again; any other failure raises ``pool_left_error``.
    """
    deadline = time.monotonic() + DELETE_DEADLINE_S
    while True:
        try:
            await _delete_once(provider, pool)
            return
        except ThrottledError as exc:
            pause_s = max(exc.retry_after_s, THROTTLE_MIN_PAUSE_S)
            if time.monotonic() + pause_s > deadline:
                raise pool_left_error(provider, pool, cluster, exc) from exc
            logger.warning(
                "cluster %s: deleting pool %s was throttled; trying again in %.0f s",
                cluster,
                pool,
                pause_s,
            )
            await asyncio.sleep(pause_s)
        except AzManagersError as exc:
            raise pool_left_error(provider, pool, cluster, exc) from exc


async def _delete_once(provider: Provider, pool: str) -> None:
    try:
        await asyncio.to_thread(provider.delete_pool, pool, wait=True)
    except RuntimeError:  # interpreter exit: executors refuse new work; block instead
        provider.delete_pool(pool, wait=True)


def pool_left_error(
    provider: Provider, pool: str, cluster: str, cause: AzManagersError
) -> ProviderError:
    """Say which pool was left behind, when the provider takes calls again, and what deletes it.

    A ``ThrottledError`` (with the provider's Retry-After) for a throttled delete, else a
    ``ProviderError``.
    """
    head = (
        f"cluster {cluster} is closed here, but its {provider.name} pool {pool} was not "
        f"deleted ({cause})"
    )
    tail = (
        f"Its instances keep running (and billing) until it is deleted: once this process has "
        f"exited, `azm gc` deletes it (or delete the pool {pool} yourself)."
    )
    if isinstance(cause, ThrottledError):
        wait_s = max(cause.retry_after_s, THROTTLE_MIN_PAUSE_S)
        at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=wait_s)
        return ThrottledError(
            f"{head}: the provider is throttling this subscription and accepts calls again "
            f"in about {wait_s:.0f} s (at {at:%H:%M:%S} UTC). {tail}",
            retry_after_s=wait_s,
        )
    return ProviderError(f"{head}. {tail}")


@atexit.register
def _close_all_clusters() -> None:
    for cluster in list(LIVE_CLUSTERS):
        with contextlib.suppress(Exception):
            cluster.close(timeout=EXIT_CLOSE_TIMEOUT_S)
