"""Start a named cluster: the record first, then the head VM, then wait for its service."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from azmanagers.config.durations import parse_duration
from azmanagers.config.settings import check_env, check_timeout, resolve
from azmanagers.detached.vms import (
    AZURE_SERVICE_PORT,
    first_nic_template,
    free_local_port,
    self_delete_method,
    service_payload,
)
from azmanagers.errors import (
    AzManagersError,
    ClusterClosedError,
    ConfigError,
    DetachedServiceError,
    WaitTimeoutError,
)
from azmanagers.named.handle import STORE, NamedCluster, save_record
from azmanagers.named.wire import HeadStatus
from azmanagers.providers import boot
from azmanagers.providers.base import BootSpec, InstanceState, Provider, VMSpec
from azmanagers.providers.tags import NAMED_OWNER, TAG_CLUSTER, TAG_EXPIRES, TAG_OWNER
from azmanagers.state.clusters import ClusterRecord, check_cluster_name
from azmanagers.tls import fingerprint, make_cluster_credentials, make_self_signed

LOCAL_READY_TIMEOUT_S = 120.0
AZURE_READY_TIMEOUT_S = 900.0
AZURE_NODES_TIMEOUT_S = 1800.0
"""``start --wait`` without a timeout on Azure: allocation and boot of many VMs take a while."""
HEAD_TTL_S = 30 * 24 * 3600.0
"""The head's expiry tag (gc deletes a head past it); autostop and ``stop`` come first."""
PROVIDER_CHECK_S = 5.0
"""While waiting for the head: how often its VM is read from the provider (an ARM read)."""
_POLL_S = 0.25
MAX_SETUP_BYTES = 16 * 1024
"""A setup script rides in every node's custom data (64 KiB in all, gzip'd with the rest)."""

Progress = Callable[[str], None]


def start_cluster(
    name: str,
    *,
    template: str = "local",
    nodes: int = 1,
    head_template: str | None = None,
    nic_template: str | None = None,
    autostop: str | float | None = None,
    wait: bool = False,
    timeout: str | float | None = None,
    env: Mapping[str, str] | None = None,
    setup: str | Path | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> NamedCluster:
    """Start the named cluster ``name``: a head VM runs its scheduler and the reconciler of
    its workers' pool, so it outlives this process.

    Parameters
    ----------
    name
        3 to 40 lower-case letters, digits and '-'.
    template
        The scale-set template of the workers (``azm cluster templates`` lists them).
    nodes
        Workers to start with (at most the template's ``max_instances``).
    head_template
        The VM template of the head; default ``local`` on the local provider.
    setup
        A bash script (a file's path, or the script's text when it has a newline) each node
        runs before its worker joins, and again on ``setup()``. Keep it idempotent.
    autostop
        Idle time (``"30m"``, seconds) after which the head deletes the pool and itself.
    wait, timeout
        Wait until all ``nodes`` joined (WaitTimeoutError after ``timeout``: "k of n nodes
        joined" with a failed node's boot log); without ``wait``, until the head answers.
    **settings
        Overrides of the template's settings, as for ``addprocs``.
    """
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import (
        load_template_nic,
        load_template_scaleset,
        load_template_vm,
    )
    from azmanagers.providers import get_provider

    started = time.monotonic()
    check_cluster_name(name)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ConfigError(
            f"nodes must be a whole number of at least 1, got {nodes!r} (to keep only the head "
            "later, resize the cluster to 0)."
        )
    timeout_s = _seconds(timeout, "timeout") if timeout is not None else None
    if timeout_s is not None:
        check_timeout(timeout_s, without="leave it out for the default deadline")
    autostop_s = _seconds(autostop, "autostop") if autostop is not None else 0.0
    if env is not None:
        check_env(env)
    setup_script = read_setup(setup) if setup is not None else None
    _refuse_taken(name)
    tmpl = load_template_scaleset(template)
    provider_name = template_provider(tmpl)
    resolved = resolve({**tmpl, "provider": provider_name}, settings, template_name=template)
    if nodes > resolved.max_instances:
        raise ConfigError(
            f"template {template!r} allows at most {resolved.max_instances} nodes (asked for "
            f"{nodes}); raise max_instances in the template or start with fewer."
        )
    local = provider_name == "local"
    head_name = head_template or ("local" if local else "")
    if not head_name:
        raise ConfigError(
            "an Azure cluster's head needs a VM template: pass head_template= (or --head-"
            "template); `azm template list` shows the VM templates."
        )
    vm_tmpl = load_template_vm(head_name)
    if not local and not self_delete_method(False, vm_tmpl):
        raise ConfigError(
            f"the head's VM template {head_name!r} has no managed identity: the head calls ARM "
            "as itself (no credential of yours goes to it). Build it with "
            "build_vmtemplate(..., managed_identity=True) and give that identity a role on "
            "the resource group that may create scale sets and delete VMs (e.g. Virtual "
            "Machine Contributor and Network Contributor)."
        )
    head_provider = get_provider(template_provider(vm_tmpl), vm_tmpl)
    nic = {} if local else load_template_nic(nic_template or first_nic_template())

    pair = make_self_signed(f"azmanagers head {name}")
    token = secrets.token_urlsafe(32)
    port = free_local_port() if local else AZURE_SERVICE_PORT
    credentials = make_cluster_credentials(name, [resolved.scheduler_host, "localhost"])
    head_vm = f"{name}-head"
    payload = service_payload(
        name, local, port, pair, token, self_delete_method(local, vm_tmpl)
    ) | {
        "cluster": {
            "template_name": template,
            "template": tmpl,
            "settings": asdict(resolved),
            "credentials": {
                "ca": credentials.ca,
                "scheduler": asdict(credentials.scheduler),
                "worker": asdict(credentials.worker),
                "client": asdict(credentials.client),  # the cluster's own calls to its scheduler
            },
            "nodes": nodes,
            "env": dict(env or {}),
            "requirements": None,
            "autostop_s": autostop_s,
            "setup": setup_script,
        },
    }
    record = ClusterRecord(
        name=name,
        template=template,
        head_template=head_name,
        provider=provider_name,
        pool=name,
        head=head_vm,
        nodes=nodes,
        port=port,
        cert=pair.cert,
        fingerprint=fingerprint(pair.cert),
        token=token,
        ca=credentials.ca,
        client_cert=credentials.client.cert,
        client_key=credentials.client.key,
        autostop_s=autostop_s,
        setup=setup_script or "",
        pool_template_doc=json.dumps(tmpl, sort_keys=True),
        head_template_doc=json.dumps(vm_tmpl, sort_keys=True),
        step="recorded",
        created_at=time.time(),
        status="creating",
    )
    boot_spec = BootSpec(role="head", payload=payload, env={})
    boot.render(boot_spec)  # a payload over the custom-data limit: a ConfigError, no record
    # Written before any cloud call, so a crash part-way leaves a record `stop` finishes with;
    # created only if there is none: it reserves the name.
    reserved = STORE.create(record)
    if reserved is None:
        _refuse_taken(name)
        raise ConfigError(f"a cluster named {name!r} exists already; pick another name.")
    record = reserved
    spec = VMSpec(
        name=head_vm,
        boot=boot_spec,
        tags={
            TAG_CLUSTER: name,
            TAG_OWNER: NAMED_OWNER,
            TAG_EXPIRES: str(int(time.time() + HEAD_TTL_S)),
        },
        template=vm_tmpl,
        nic_template=nic,
    )
    _say(progress, f"cluster {name}: creating its head {head_vm}")
    try:
        info = head_provider.create_vm(spec)
    except AzManagersError as exc:
        _mark_failed(record, "head-create", str(exc))
        raise
    if not _ours(record):  # a stop ran while the VM was made: it found none to delete
        head_provider.delete_vm(head_vm)
        raise ClusterClosedError(
            f"cluster {name} was stopped while it started (its head was deleted again); "
            "start it again."
        )
    record = _advance(record, host=info.address, step="head-created")
    if timeout_s is not None:
        limit = max(1.0, timeout_s - (time.monotonic() - started))
    else:
        limit = LOCAL_READY_TIMEOUT_S if local else AZURE_READY_TIMEOUT_S
    cluster = NamedCluster(record)
    try:
        status = _wait_for_head(cluster, head_provider, limit, progress)
    except (DetachedServiceError, WaitTimeoutError) as exc:
        _mark_failed(record, "head-wait", str(exc))
        raise
    cluster.record = _advance(record, scheduler=status.scheduler, status="up", step="up", reason="")
    _say(progress, f"cluster {name}: up, scheduler at {status.scheduler}")
    if wait and nodes:
        default_s = LOCAL_READY_TIMEOUT_S if local else AZURE_NODES_TIMEOUT_S
        cluster.wait_for_nodes(
            nodes,
            timeout=timeout_s if timeout_s is not None else default_s,
            since=started,
            progress=None if progress is None else _node_progress(name, progress),
        )
    return cluster


def read_setup(setup: str | Path) -> str:
    """The setup script: a file's text, or ``setup`` itself when it is a script (has a
    newline); ConfigError when the file cannot be read or the script is too large."""
    text: str
    if isinstance(setup, str) and "\n" in setup:
        text = setup
    else:
        path = Path(setup)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the setup script {str(path)!r} ({exc}); give a bash script's path."
            ) from None
    if len(text.encode()) > MAX_SETUP_BYTES:
        raise ConfigError(
            f"the setup script has {len(text.encode())} bytes; at most {MAX_SETUP_BYTES} fit in "
            "a VM's custom data: let it download the rest (e.g. from Blob storage)."
        )
    if not text.strip():
        raise ConfigError("the setup script is empty; give a bash script's path.")
    return text


def _node_progress(name: str, progress: Progress) -> Callable[[int, int], None]:
    said = [-1]

    def tell(joined: int, wanted: int) -> None:
        if joined != said[0]:
            said[0] = joined
            progress(f"cluster {name}: {joined} of {wanted} nodes joined")

    return tell


def _wait_for_head(
    cluster: NamedCluster, provider: Provider, timeout_s: float, progress: Progress | None
) -> HeadStatus:
    """Wait until the head's service answers with its scheduler's address."""
    record = cluster.record
    deadline = time.monotonic() + timeout_s
    started = checked = said = time.monotonic()
    while True:
        try:
            status = cluster.status()
            if status.scheduler:
                return status
        except DetachedServiceError:
            pass
        now = time.monotonic()
        if now - checked >= PROVIDER_CHECK_S:  # ARM reads are rate limited
            checked = now
            info = provider.get_vm(record.head)
            if info is None or info.state in (InstanceState.FAILED, InstanceState.STOPPED):
                raise DetachedServiceError(
                    f"the head of cluster {record.name} ({record.head}) stopped before its "
                    f"service answered; `azm cluster stop {record.name}` deletes what was made. "
                    f"Its boot log ends:\n{provider.vm_log(record.head) or '(no boot log)'}"
                )
        if now > deadline:
            raise WaitTimeoutError(
                f"the head of cluster {record.name} did not answer within {timeout_s:g} s; "
                f"`azm cluster stop {record.name}` deletes what was made. Its boot log ends:\n"
                f"{provider.vm_log(record.head) or '(no boot log)'}"
            )
        if progress is not None and now - said >= 10.0:
            said = now
            progress(f"cluster {record.name}: waiting for its head ({now - started:.0f} s)")
        time.sleep(_POLL_S)


def _ours(record: ClusterRecord) -> bool:
    """Whether the stored record is still the one this start wrote (not stopped meanwhile)."""
    current = STORE.load(record.name)
    return (
        current is not None
        and current.token == record.token
        and current.status
        in (
            "creating",
            "up",
        )
    )


def _advance(record: ClusterRecord, **changes: Any) -> ClusterRecord:
    """Save the next step of this start, unless a ``stop`` took the cluster meanwhile."""
    if not _ours(record):
        raise ClusterClosedError(
            f"cluster {record.name} was stopped (or replaced) while it started; start it again."
        )
    return save_record(replace(record, **changes))


def _mark_failed(record: ClusterRecord, step: str, reason: str) -> None:
    """Record that this start failed at ``step`` (not when a ``stop`` took the record)."""
    if _ours(record):
        save_record(replace(record, status="failed", step=step, reason=reason))


def _refuse_taken(name: str) -> None:
    found = STORE.load(name) if STORE.exists(name) else None
    if found is not None:
        raise ConfigError(
            f"a cluster named {name!r} exists already (status {found.status}); use it, "
            f"`azm cluster stop {name}` first, or pick another name."
        )


def _seconds(value: str | float, what: str) -> float:
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress(text)
