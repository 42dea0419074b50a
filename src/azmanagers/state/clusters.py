"""Named cluster records: the head's service and scheduler, the client's TLS, the worker pool."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from azmanagers.errors import ConfigError
from azmanagers.state.records import Kind

CLUSTER_STATUSES = ("creating", "up", "stopping", "stopped", "failed")
"""``creating``: written before any cloud call; ``up``: the head's scheduler answered;
``stopping``: ``stop`` is deleting the pool, then the head (each step recorded in ``step``);
``stopped``: the head stopped itself (autostop) or is gone, the record kept for ``list``;
``failed``: ``start`` did not finish (``stop`` cleans up what it made)."""

CLUSTER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,38}[a-z0-9])")
"""ElastiCluster's rule: lower-case letters, digits and dashes, 3 to 40 characters, no dash at
either end (the name goes into VM, pool and DNS names)."""


def check_cluster_name(name: object) -> str:
    """Return ``name`` when it can name a cluster; else a ConfigError saying what to do."""
    if not isinstance(name, str) or not CLUSTER_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid cluster name: use 3 to 40 lower-case letters, digits and "
            "'-', starting and ending with a letter or digit (e.g. 'study-2026')."
        )
    return name


@dataclass(frozen=True)
class ClusterRecord:
    """A named cluster as the caller (or an importer) records it. It holds credentials (the
    service's token, the client's TLS key): the file is 0600 and they stay out of reprs."""

    name: str
    template: str
    """The scale-set template of the workers' pool."""
    head_template: str
    """The VM template of the head."""
    provider: str
    pool: str
    """The workers' pool (and the value of the cluster tag on everything the cluster made)."""
    head: str
    """The head VM's name."""
    nodes: int = 0
    """The pool's target size as last set by ``start`` or ``resize``."""
    pool_template_doc: str = field(default="", repr=False)
    head_template_doc: str = field(default="", repr=False)
    """The two templates as JSON, as they were at ``start``: ``stop`` finds the cluster's
    resources with them on a machine that lacks (or changed) the templates."""
    host: str = ""
    port: int = 0
    """The head's HTTPS service (0 until the head answered)."""
    scheduler: str = ""
    """The Dask scheduler's address on the head (``tls://host:port``)."""
    cert: str = field(default="", repr=False)
    fingerprint: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    ca: str = field(default="", repr=False)
    client_cert: str = field(default="", repr=False)
    client_key: str = field(default="", repr=False)
    setup: str = field(default="", repr=False)  # a script may hold a token
    """The setup script every node runs before its worker joins (empty: none)."""
    autostop_s: float = 0.0
    """Idle seconds before the head stops the cluster (0: never)."""
    step: str = ""
    """The last step of ``start`` or ``stop`` that was done (so a second ``stop`` finishes)."""
    reason: str = ""
    """Why the cluster is ``failed`` or ``stopped``."""
    created_at: float = 0.0
    status: str = "creating"
    updated_at: float = 0.0


def _from_first(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no setup script nor template copies: they stay empty."""
    return data


CLUSTERS = Kind(
    name="clusters",
    schema_version=2,
    statuses=CLUSTER_STATUSES,
    upgrades={1: _from_first},
    description="cluster",
)
"""Named cluster records: ``state/clusters/<name>.json``."""
