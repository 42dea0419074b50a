"""Commands and the setup script on a cluster's nodes, run by the head through their workers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azmanagers.agent.nodeexec import run_command_async, run_setup_async
from azmanagers.errors import ConfigError, DetachedServiceError
from azmanagers.named.wire import EXEC_TIMEOUT_S, NodeResult

if TYPE_CHECKING:
    from distributed import Client


def worker_addresses(client: Client, node: str | None = None) -> dict[str, str]:
    """The joined workers' addresses by node name; with ``node``, that one only
    (ConfigError listing the nodes when it is not there)."""
    info: Mapping[str, Any] = client.scheduler_info()["workers"]
    by_name = {str(w.get("name")): address for address, w in info.items()}
    if node is None:
        return dict(sorted(by_name.items()))
    if node not in by_name:
        known = ", ".join(sorted(by_name)) or "none has joined"
        raise ConfigError(f"no node named {node!r} in this cluster (nodes: {known}).")
    return {node: by_name[node]}


def _results(raw: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> list[NodeResult]:
    by_address = {address: name for name, address in names.items()}
    out = []
    for address, result in raw.items():
        out.append(
            NodeResult(
                node=by_address.get(address, str(result.get("node", address))),
                exit_code=int(result["exit_code"]),
                stdout=str(result.get("stdout", "")),
                stderr=str(result.get("stderr", "")),
                duration_s=float(result.get("duration_s", 0.0)),
                skipped=bool(result.get("skipped", False)),
            )
        )
    return sorted(out, key=lambda r: r.node)


def exec_on_nodes(
    client: Client,
    command: str,
    *,
    node: str | None = None,
    timeout_s: float = EXEC_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> list[NodeResult]:
    """Run ``command`` (bash text) on every node, or on ``node``, at once, through their
    workers; a result per node. Nothing but the cluster's TLS is used: no sshd."""
    text = command
    names = worker_addresses(client, node)
    if not names:
        return []
    try:
        raw = client.run(
            run_command_async,
            text,
            timeout_s,
            dict(env or {}),
            workers=list(names.values()),
            wait=True,
        )
    except Exception as exc:  # raised on a node, or a node that left meanwhile
        raise DetachedServiceError(f"exec on the cluster's nodes failed: {exc}") from None
    return _results(raw, names)


def setup_on_nodes(
    client: Client, script: str, *, only_new: bool = False, timeout_s: float = 900.0
) -> list[NodeResult]:
    """Run the setup ``script`` on every joined node (with ``only_new``: where it has not
    run yet); a result per node."""
    names = worker_addresses(client)
    if not names:
        return []
    try:
        raw = client.run(run_setup_async, script, timeout_s, only_new, workers=list(names.values()))
    except Exception as exc:  # raised on a node, or a node that left meanwhile
        raise DetachedServiceError(f"setup on the cluster's nodes failed: {exc}") from None
    return _results(raw, names)
