"""Ownership tags on every resource we create: cluster, owner process and expiry."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

TAG_CLUSTER = "azmanagers-cluster"
TAG_OWNER = "azmanagers-owner"
TAG_EXPIRES = "azmanagers-expires"
DETACHED_OWNER = "detached"
"""The owner tag of a detached VM: it outlives its caller by design (gc goes by its expiry)."""
NAMED_OWNER = "named"
"""The owner tag of a named cluster's head: it outlives its caller by design (gc goes by its
expiry; its pool is owned by the head's process)."""


def resource_tags(cluster: str, owner: str, ttl_s: float) -> dict[str, str]:
    """Return the three tags every resource we create carries."""
    return {
        TAG_CLUSTER: cluster,
        TAG_OWNER: owner,
        TAG_EXPIRES: str(int(time.time() + ttl_s)),
    }


def owner_id() -> str:
    """Return this process's owner tag value: ``pid:start-time@host``."""
    import psutil

    me = psutil.Process()
    return f"{me.pid}:{me.create_time():.2f}@{os.uname().nodename}"


def owner_alive(owner: str) -> bool:
    """Tell whether the process named by an owner tag value still runs on this host.

    An owner on another host is taken as alive: it is not ours to judge.
    """
    import psutil

    try:
        pid_part, rest = owner.split(":", 1)
        created, host = rest.split("@", 1)
        if host != os.uname().nodename:
            return True
        proc = psutil.Process(int(pid_part))
        return bool(abs(proc.create_time() - float(created)) < 0.01)
    except (ValueError, psutil.Error):
        return False


def is_expired(tags: Mapping[str, str], now: float | None = None) -> bool:
    """Tell whether the ``azmanagers-expires`` tag among ``tags`` lies in the past."""
    try:
        return float(tags[TAG_EXPIRES]) < (time.time() if now is None else now)
    except (KeyError, ValueError):
        return False
