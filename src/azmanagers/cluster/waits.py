"""Waiting for workers: always with a deadline, ended early by what makes waiting pointless."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from distributed.core import Status

from azmanagers.config.settings import check_timeout as settings_check_timeout
from azmanagers.errors import ClusterClosedError, ConfigError, ThrottledError, WaitTimeoutError

if TYPE_CHECKING:
    from azmanagers.cluster.core import AzCluster

logger = logging.getLogger("azmanagers.cluster")

PROGRESS_INTERVAL_S = 0.2
ProgressCallback = Callable[[int, int], None]


def wait_for_workers(
    cluster: AzCluster, n_workers: int, wait_s: float, progress: ProgressCallback | None
) -> None:
    """Block until ``n_workers`` workers joined ``cluster``, for at most ``wait_s`` seconds.

    Raises the reconciler's error recorded after the wait began, ``ConfigError`` when the
    target is below ``n_workers``, ``ClusterClosedError``, ``ThrottledError`` when the
    provider may not be called before the deadline, and ``WaitTimeoutError`` at the deadline.
    """
    reconciler = cluster.reconciler
    deadline = time.monotonic() + wait_s
    seq = reconciler.errors.seq()
    last = -1
    while True:
        joined = cluster.nworkers()
        if joined != last:
            last = joined
            if progress is not None:
                progress(joined, n_workers)
            logger.info("cluster %s: %d of %d workers joined", cluster.name, joined, n_workers)
        if joined >= n_workers:
            return
        error = reconciler.errors.since(seq)
        if error is not None:
            raise error
        if cluster.target < n_workers:
            raise ConfigError(
                f"waiting for {n_workers} workers but cluster {cluster.name} aims at "
                f"{cluster.target}; call scale({n_workers}) first."
            )
        if cluster.status in (Status.closing, Status.closed):
            raise ClusterClosedError(f"cluster {cluster.name} was closed while waiting.")
        throttled_s = reconciler.gate.throttled_for_s()
        if throttled_s > 0 and throttled_s > deadline - time.monotonic():
            raise ThrottledError(
                f"{joined} of {n_workers} workers joined cluster {cluster.name}, and the "
                f"provider asked us to make no calls for {throttled_s:.0f} s, past this "
                "wait's deadline; wait longer, or lower the request rate.",
                retry_after_s=throttled_s,
            )
        if time.monotonic() > deadline:
            raise WaitTimeoutError(timeout_message(cluster, joined, n_workers, wait_s))
        time.sleep(PROGRESS_INTERVAL_S)


def timeout_message(cluster: AzCluster, joined: int, wanted: int, timeout_s: float) -> str:
    """Say how many joined, which instances still boot, and the end of one's boot log."""
    booting = sorted(cluster.plan - set(cluster.worker_names()))
    text = f"{joined} of {wanted} workers joined cluster {cluster.name} within {timeout_s:g} s"
    if booting:
        text += f"; still booting: {', '.join(booting)}"
        tail = cluster.reconciler.instance_log(booting[0], tail_bytes=1024)
        if tail.strip():
            text += f". End of {booting[0]}'s boot log:\n{indent(tail)}"
    return text


def indent(text: str) -> str:
    """Indent every line of ``text`` (a boot log) by four spaces."""
    return "\n".join("    " + line for line in text.rstrip().splitlines()) or "    (empty)"


def check_count(n: object, *, allow_zero: bool = False) -> None:
    """Raise ConfigError unless ``n`` is a whole number of workers (>= 1, or >= 0)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or (n == 0 and not allow_zero):
        least = "0" if allow_zero else "1"
        raise ConfigError(f"the number of workers must be a whole number >= {least}, got {n!r}.")


def check_timeout(timeout: object) -> float:
    """Return a wait's ``timeout`` in seconds, or raise ConfigError (see settings)."""
    seconds = settings_check_timeout(timeout, without="leave it out for the default deadline")
    if seconds is None:
        raise ConfigError("timeout must be a finite number of seconds > 0, got None.")
    return seconds
