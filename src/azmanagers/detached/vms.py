"""Detached VMs on the caller's side: create one with its service, remember it, delete it.

A VM's record (``state/detached/<name>.json``, mode 0600) holds where its service listens,
the service's certificate (pinned) and its bearer token, so any process of the same user
can reach it later (``DetachedJob.attach``). The VM itself keeps only the token's hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from azmanagers.config.paths import atomic_write_text, state_dir
from azmanagers.detached.client import ServiceAddress, ServiceClient
from azmanagers.errors import ConfigError, DetachedServiceError, WaitTimeoutError
from azmanagers.providers.base import BootSpec, InstanceState, Provider, VMSpec
from azmanagers.providers.tags import DETACHED_OWNER, TAG_CLUSTER, TAG_EXPIRES, TAG_OWNER
from azmanagers.tls import fingerprint, make_self_signed

AZURE_SERVICE_PORT = 8081
"""The detached service's port on an Azure VM (the original's)."""
LOCAL_READY_TIMEOUT_S = 60.0
AZURE_READY_TIMEOUT_S = 900.0
DETACHED_TTL_S = 30 * 24 * 3600.0
"""A detached VM's ``azmanagers-expires`` tag by default: gc deletes it 30 days on."""
_POLL_S = 0.25
PROVIDER_CHECK_S = 5.0
"""While waiting for a VM's service, how often to ask the provider whether the VM failed."""


@dataclass(frozen=True)
class DetachedVM:
    """A VM running the detached service, as the caller records it."""

    name: str
    template: str
    provider: str
    host: str
    port: int
    cert: str = field(repr=False)
    fingerprint: str = field(repr=False)
    token: str = field(repr=False)
    created_at: float = 0.0

    def client(self) -> ServiceClient:
        """An HTTPS client of the VM's service (one per VM and process: it keeps its
        connection alive between requests)."""
        return _client_for(
            ServiceAddress(self.name, self.host, self.port, self.cert, self.fingerprint, self.token)
        )

    def ping(self) -> bool:
        """True when the service answers."""
        try:
            return bool(self.client().request("GET", "/v1/ping", timeout_s=5.0).get("ok"))
        except DetachedServiceError:
            return False

    def info(self) -> dict[str, Any]:
        """The VM as its service describes it (name, versions, CPUs, running jobs)."""
        return dict(self.client().request("GET", "/v1/vm"))


@functools.lru_cache(maxsize=64)
def _client_for(address: ServiceAddress) -> ServiceClient:
    return ServiceClient(address)


def records_dir() -> Path:
    """Where the caller keeps its detached VMs' records."""
    return state_dir() / "detached"


def _record_path(name: str) -> Path:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigError(f"{name!r} is not a detached VM name (letters, digits, '-', '_').")
    return records_dir() / f"{name}.json"


def save_vm(vm: DetachedVM) -> None:
    """Write the VM's record (0600: it holds the token)."""
    atomic_write_text(_record_path(vm.name), json.dumps(asdict(vm), indent=1))


def load_vm(name: str) -> DetachedVM:
    """Read a VM's record; ConfigError when there is none."""
    path = _record_path(name)
    try:
        data = json.loads(path.read_text())
        return DetachedVM(**data)
    except FileNotFoundError:
        known = ", ".join(list_vm_names()) or "none"
        raise ConfigError(
            f"no detached VM named {name!r} is recorded on this machine (known: {known}). "
            "Create one with addproc() or `azm vm create`."
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a detached VM record ({exc}); delete it.") from None


def forget_vm(name: str) -> None:
    """Delete the VM's record."""
    _record_path(name).unlink(missing_ok=True)


def list_vm_names() -> list[str]:
    """The names of the recorded detached VMs."""
    folder = records_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []


def _free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_vm(
    template: str = "local",
    *,
    name: str | None = None,
    nic_template: str | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    ttl_s: float = DETACHED_TTL_S,
    progress: Callable[[str], None] | None = None,
) -> DetachedVM:
    """Create a VM from ``template`` running the detached service; wait until it answers."""
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import load_template_nic, load_template_vm
    from azmanagers.providers import get_provider

    tmpl = load_template_vm(template)
    provider_name = template_provider(tmpl)
    provider = get_provider(provider_name, tmpl)
    name = name or f"azm-{secrets.token_hex(3)}"
    if _record_path(name).exists():
        raise ConfigError(
            f"a detached VM named {name!r} exists already; rmproc it or pick another name."
        )
    local = provider_name == "local"
    nic: dict[str, Any] = {}
    if not local:
        nic_name = nic_template or _first_nic_template()
        nic = load_template_nic(nic_name)
    pair = make_self_signed(f"azmanagers detached {name}")
    token = secrets.token_urlsafe(32)
    port = _free_local_port() if local else AZURE_SERVICE_PORT
    payload = {
        "name": name,
        "host": "127.0.0.1" if local else "",  # on a VM: its own address
        "port": port,
        "tls": {"cert": pair.cert, "key": pair.key},
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        "self_delete": _self_delete_method(local, tmpl),
    }
    tags = {
        TAG_CLUSTER: f"detached-{name}",
        TAG_OWNER: DETACHED_OWNER,
        TAG_EXPIRES: str(int(time.time() + ttl_s)),
    }
    spec = VMSpec(
        name=name,
        boot=BootSpec(role="detached", payload=payload, env=dict(env or {})),
        tags=tags,
        template=tmpl,
        nic_template=nic,
    )
    info = provider.create_vm(spec)
    vm = DetachedVM(
        name=name,
        template=template,
        provider=provider_name,
        host=info.address,
        port=port,
        cert=pair.cert,
        fingerprint=fingerprint(pair.cert),
        token=token,
        created_at=time.time(),
    )
    save_vm(vm)
    limit = timeout or (LOCAL_READY_TIMEOUT_S if local else AZURE_READY_TIMEOUT_S)
    _wait_ready(vm, provider, limit, progress)
    return vm


def _self_delete_method(local: bool, template: Mapping[str, Any]) -> str:
    """How the VM can delete itself: a local process-VM always; an Azure VM through its
    managed identity (``build_vmtemplate(..., managed_identity=True)``); else not at all."""
    if local:
        return "local"
    identity = (template.get("value") or {}).get("identity") or {}
    return "azure" if "systemassigned" in str(identity.get("type", "")).lower() else ""


def can_delete_itself(template: str) -> bool:
    """Whether a VM from ``template`` can delete itself after a ``persist=False`` job."""
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import load_template_vm

    tmpl = load_template_vm(template)
    return bool(_self_delete_method(template_provider(tmpl) == "local", tmpl))


def _first_nic_template() -> str:
    from azmanagers.config.templates import stored_template_names

    names = stored_template_names("nic")
    if not names:
        raise ConfigError(
            "an Azure VM needs a NIC template: build one with build_nictemplate and save it "
            "with save_template_nic, or pass nic_template=."
        )
    return names[0]


def _wait_ready(
    vm: DetachedVM, provider: Provider, timeout_s: float, progress: Callable[[str], None] | None
) -> None:
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    said = checked = 0.0
    while not vm.ping():
        if time.monotonic() - checked < PROVIDER_CHECK_S:  # ARM reads are rate limited
            time.sleep(_POLL_S)
            continue
        checked = time.monotonic()
        info = provider.get_vm(vm.name)
        if info is None or info.state in (InstanceState.FAILED, InstanceState.STOPPED):
            raise DetachedServiceError(
                f"VM {vm.name} stopped before its detached service started; its boot log ends:"
                f"\n{_boot_log(provider, vm.name)}"
            )
        if time.monotonic() > deadline:
            raise WaitTimeoutError(
                f"the detached service of VM {vm.name} did not answer within {timeout_s:g} s "
                f"(the VM is kept: rmproc({vm.name!r}) deletes it). Its boot log ends:\n"
                f"{_boot_log(provider, vm.name)}"
            )
        if progress is not None and time.monotonic() - said >= 10.0:
            said = time.monotonic()
            progress(f"waiting for VM {vm.name} ({said - started:.0f} s)")
        time.sleep(_POLL_S)


def _boot_log(provider: Provider, name: str) -> str:
    return provider.vm_log(name) or "(no boot log yet)"


def delete_vm(vm: DetachedVM | str) -> None:
    """Delete a detached VM (its running jobs end with it) and forget its record."""
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import load_template_vm
    from azmanagers.providers import get_provider

    record = load_vm(vm) if isinstance(vm, str) else vm
    tmpl = load_template_vm(record.template)
    provider = get_provider(template_provider(tmpl), tmpl)
    provider.delete_vm(record.name)
    forget_vm(record.name)
