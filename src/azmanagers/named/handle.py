"""A named cluster as its caller holds it: the record, the head's service, a Dask client."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from azmanagers.detached.client import ServiceAddress, ServiceClient
from azmanagers.detached.wire import WireError
from azmanagers.errors import (
    ConfigError,
    DetachedServiceError,
    ServiceRefusedError,
    WaitTimeoutError,
)
from azmanagers.named.execute import exec_via_head, setup_via_head
from azmanagers.named.wire import EXEC_TIMEOUT_S, HEAD_RESIZE, HEAD_STATUS, HeadStatus, NodeResult
from azmanagers.state.clusters import CLUSTERS, ClusterRecord, check_cluster_name
from azmanagers.state.records import RecordStore

if TYPE_CHECKING:
    from distributed import Client

    from azmanagers.detached.vms import DetachedVM

STORE: RecordStore[ClusterRecord] = RecordStore(CLUSTERS, ClusterRecord)
"""The named clusters this machine knows (``AZMANAGERS_HOME/state/clusters``)."""
WAIT_POLL_S = 0.5
"""How often a wait for nodes asks the head (one request; the head makes no cloud call)."""


def load_record(name: str) -> ClusterRecord:
    """The record of cluster ``name``; ConfigError naming the known ones when there is none."""
    check_cluster_name(name)
    found = STORE.load(name)
    if found is None:
        known = ", ".join(STORE.names()) or "none"
        raise ConfigError(
            f"no cluster named {name!r} is recorded on this machine (known: {known}). "
            "Start one with `azm cluster start NAME`, or import its record with "
            "`azm cluster import FILE`."
        )
    return found


def save_record(record: ClusterRecord) -> ClusterRecord:
    """Write the record (0600) and return it as written."""
    return STORE.save(record)


class NamedCluster:
    """A named cluster: its head runs the scheduler and the reconciler; this object talks to
    the head's service and makes Dask clients. Get one from ``start_cluster`` or
    ``named_cluster(name)``."""

    def __init__(self, record: ClusterRecord) -> None:
        self.record = record
        self._service: ServiceClient | None = None

    def __repr__(self) -> str:
        r = self.record
        return f"NamedCluster({r.name!r}, status={r.status!r}, nodes={r.nodes}, head={r.head!r})"

    @property
    def name(self) -> str:
        """The cluster's name."""
        return self.record.name

    @property
    def scheduler_address(self) -> str:
        """The scheduler's address on the head (``tls://host:port``)."""
        return self.record.scheduler

    def service(self) -> ServiceClient:
        """The pinned client of the head's service."""
        r = self.record
        if not r.port or not r.host:
            raise DetachedServiceError(
                f"the head of cluster {r.name} never answered (status {r.status}); "
                f"`azm cluster stop {r.name}` deletes what was made."
            )
        if self._service is None:
            self._service = ServiceClient(
                ServiceAddress(r.head, r.host, r.port, r.cert, r.fingerprint, r.token),
                what=f"the head of cluster {r.name} ({r.head})",
                hint=(
                    f"Is the head running? `azm cluster list --refresh` shows what exists; "
                    f"`azm cluster stop {r.name}` still works."
                ),
            )
        return self._service

    def status(self, *, boot_log: bool = False) -> HeadStatus:
        """The cluster as its head sees it (one request to the head, no cloud call; with
        ``boot_log``, the boot log of a node that has not joined: one provider call)."""
        query = {"boot_log": "1"} if boot_log else None
        try:
            reply = self.service().request("GET", HEAD_STATUS.path(), query=query)
            return HeadStatus.from_json(reply)
        except WireError as exc:
            raise DetachedServiceError(f"the head of cluster {self.name}: {exc}") from None

    def nodes(self) -> HeadStatus:
        """Alias of ``status()``: its ``nodes`` are the pool's nodes."""
        return self.status()

    def resize(self, nodes: int | None = None, *, add: int | None = None) -> HeadStatus:
        """Set the pool's size to ``nodes``, or change it by ``add`` (may be negative)."""
        if (nodes is None) == (add is None):
            raise ConfigError("resize takes a node count or add=K (one of them).")
        value = nodes if nodes is not None else add
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"resize takes a whole number of nodes, got {value!r}.")
        if nodes is not None and nodes < 0:
            raise ConfigError(f"resize to {nodes} nodes: the least is 0.")
        body = {"nodes": nodes} if nodes is not None else {"add": add}
        try:
            reply = self.service().request("POST", HEAD_RESIZE.path(), body=body)
            status = HeadStatus.from_json(reply)
        except WireError as exc:
            raise DetachedServiceError(f"the head of cluster {self.name}: {exc}") from None
        except ServiceRefusedError as exc:
            if exc.status in (400, 409):  # a size the head refused: past max_instances, ...
                raise ConfigError(f"cluster {self.name}: {exc}") from None
            raise
        self.record = save_record(replace(self.record, nodes=status.target))
        return status

    def wait_for_nodes(
        self,
        n: int | None = None,
        *,
        timeout: float = 900.0,
        progress: Callable[[int, int], None] | None = None,
        since: float | None = None,
    ) -> HeadStatus:
        """Wait until ``n`` (default: the target) nodes' workers joined, at most ``timeout``
        seconds from ``since`` (a ``time.monotonic()``; default now); WaitTimeoutError saying
        how many joined, with the boot-log tail of one that did not."""
        deadline = (time.monotonic() if since is None else since) + timeout
        while True:
            status = self.status()
            wanted = status.target if n is None else n
            if status.joined >= wanted:
                return status
            if status.error:
                raise WaitTimeoutError(f"cluster {self.name}: {status.error}")
            if progress is not None:
                progress(status.joined, wanted)
            if time.monotonic() >= deadline:
                status = self.status(boot_log=True)
                raise WaitTimeoutError(
                    f"cluster {self.name}: {status.joined} of {wanted} nodes joined within "
                    f"{timeout:g} s; the cluster goes on (`azm cluster nodes {self.name}` shows "
                    f"its nodes).{_failures_text(status)}"
                )
            time.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def client(self, **kwargs: Any) -> Client:
        """A Dask ``Client`` of the cluster's scheduler, over TLS with the client's pair."""
        from distributed import Client
        from distributed.security import Security

        r = self.record
        if r.status != "up" or not r.scheduler:
            raise ConfigError(
                f"cluster {r.name} is {r.status}, not up; `azm cluster list --refresh` shows "
                "what exists."
            )
        security = Security(
            tls_ca_file=r.ca,
            tls_client_cert=r.client_cert,
            tls_client_key=r.client_key,
            require_encryption=True,
        )
        return Client(r.scheduler, security=security, **kwargs)

    def head_vm(self) -> DetachedVM:
        """The head as a detached VM: ``detachat(cluster.head_vm(), fn)`` runs a job there
        (it keeps the cluster from autostopping while it runs)."""
        from azmanagers.detached.vms import DetachedVM

        r = self.record
        if r.status != "up":
            raise ConfigError(f"cluster {r.name} is {r.status}, not up.")
        return DetachedVM(
            name=r.head,
            template=r.head_template,
            provider=r.provider,
            host=r.host,
            port=r.port,
            cert=r.cert,
            fingerprint=r.fingerprint,
            token=r.token,
            created_at=r.created_at,
            status="up",
        )

    def exec(
        self,
        command: str | Sequence[str],
        *,
        node: str | None = None,
        timeout: float = EXEC_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> list[NodeResult]:
        """Run ``command`` with bash on every node (or ``node``); a result per node. The head
        runs it through the workers: only its service needs to be reachable."""
        return exec_via_head(self, command, node=node, timeout_s=timeout, env=env)

    def setup(self, *, only_new: bool = False) -> list[NodeResult]:
        """Run the cluster's setup script again on every node (``only_new``: where it has not
        run yet); a result per node. Nodes run it anyway before their worker joins."""
        if not self.record.setup:
            raise ConfigError(
                f"cluster {self.name} has no setup script; give one to `azm cluster start "
                "--setup FILE`."
            )
        return setup_via_head(self, only_new=only_new)

    def ssh(self, node: str | None = None, command: Sequence[str] | None = None) -> int:
        """An interactive shell (or ``command``) on the head, or on ``node``, through the
        agents (no sshd); this process's terminal is relayed. Returns its exit status."""
        from azmanagers.named.ssh import check_node_name, open_shell

        return open_shell(self, check_node_name(node), command)

    def stop(self, *, progress: Callable[[str], None] | None = None) -> None:
        """Delete the pool, the head and the record (see ``named.stop.stop_cluster``)."""
        from azmanagers.named.stop import stop_cluster

        self.close()
        stop_cluster(self.name, progress=progress)

    def close(self) -> None:
        """Close the connection to the head (the cluster goes on)."""
        if self._service is not None:
            self._service.close()
            self._service = None


def _failures_text(status: HeadStatus) -> str:
    text = ""
    if status.failures:
        text += "\nNodes that failed:\n  " + "\n  ".join(status.failures[-3:])
    if status.failure_log:
        text += f"\nThe boot log of the last one ends:\n{status.failure_log}"
    if status.waiting_log:
        text += f"\nThe boot log of a node that has not joined, {status.waiting_log}"
    return text


def named_cluster(name: str) -> NamedCluster:
    """The named cluster ``name`` from this machine's record."""
    return NamedCluster(load_record(name))


def named_clusters(problems: list[str] | None = None) -> list[ClusterRecord]:
    """The named clusters this machine has records of (as recorded; see ``refresh``).

    A record that cannot be read is left out; with ``problems``, its error is added there.
    """
    records = []
    for name in STORE.names():
        try:
            found = STORE.load(name)
        except ConfigError as exc:
            if problems is not None:
                problems.append(str(exc))
            continue
        if found is not None:
            records.append(found)
    return records


def connect(name: str, **kwargs: Any) -> Client:
    """A Dask ``Client`` of the named cluster ``name`` (TLS; any process with the record)."""
    return named_cluster(name).client(**kwargs)
