"""Run a command, or the setup script, on a named cluster's nodes: asked of its head."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from azmanagers.detached.wire import WireError
from azmanagers.errors import ConfigError, DetachedServiceError, ServiceRefusedError
from azmanagers.named.wire import (
    EXEC_TIMEOUT_S,
    HEAD_EXEC,
    HEAD_SETUP,
    ExecRequest,
    NodeResult,
)

if TYPE_CHECKING:
    from azmanagers.named.handle import NamedCluster

ANSWER_MARGIN_S = 120.0
"""How much longer than the command's timeout the caller waits for the head's answer."""
SETUP_WAIT_S = 900.0 + ANSWER_MARGIN_S


def exec_via_head(
    cluster: NamedCluster,
    command: str | Sequence[str],
    *,
    node: str | None = None,
    timeout_s: float = EXEC_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> list[NodeResult]:
    """Ask the head to run ``command`` (bash text, or words that are quoted) on every node
    (or ``node``); a result per node. Only the head's service needs to be reachable."""
    text = command if isinstance(command, str) else shlex.join(command)
    if not text.strip():
        raise ConfigError("exec needs a command, e.g. `azm cluster exec NAME -- nproc`.")
    request = ExecRequest(text, node, timeout_s, dict(env or {}))
    return _results(cluster, HEAD_EXEC.path(), request.to_json(), timeout_s + ANSWER_MARGIN_S)


def setup_via_head(cluster: NamedCluster, *, only_new: bool = False) -> list[NodeResult]:
    """Ask the head to run the setup script again on every node (``only_new``: where it has
    not run yet); a result per node."""
    return _results(cluster, HEAD_SETUP.path(), {"only_new": only_new}, SETUP_WAIT_S)


def _results(cluster: NamedCluster, path: str, body: object, wait_s: float) -> list[NodeResult]:
    try:
        reply = cluster.service().request("POST", path, body=body, timeout_s=wait_s)
    except ServiceRefusedError as exc:
        if exc.status == 400:  # an unknown node, a bad command: said by the head
            raise ConfigError(f"cluster {cluster.name}: {exc}") from None
        raise
    items = reply.get("results") if isinstance(reply, dict) else None
    if not isinstance(items, list):
        raise DetachedServiceError(f"the head of cluster {cluster.name} answered {reply!r:.200}")
    try:
        return [NodeResult.from_json(item) for item in items]
    except WireError as exc:
        raise DetachedServiceError(f"the head of cluster {cluster.name}: {exc}") from None
