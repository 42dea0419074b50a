"""Detached VMs on the caller's side: create one with its service, record it, delete it."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from azmanagers.detached.client import ServiceAddress, ServiceClient
from azmanagers.detached.wire import ServiceInfo
from azmanagers.errors import ConfigError, DetachedServiceError, ProviderError, WaitTimeoutError
from azmanagers.providers.base import BootSpec, InstanceState, Provider, VMSpec
from azmanagers.providers.tags import DETACHED_OWNER, TAG_CLUSTER, TAG_EXPIRES, TAG_OWNER
from azmanagers.state.records import RecordStore
from azmanagers.state.vms import DETACHED_VMS, VMRecord
from azmanagers.tls import KeyPair, fingerprint, make_self_signed

AZURE_SERVICE_PORT = 8081
"""The detached service's port on an Azure VM (the original's)."""
SERVICE_PORTS = (20000, 32768)
"""Where a local process-VM's service port is drawn from: below the ephemeral range."""
PORT_TRIES = 50
LOCAL_READY_TIMEOUT_S = 60.0
AZURE_READY_TIMEOUT_S = 900.0
DETACHED_TTL_S = 30 * 24 * 3600.0
"""A detached VM's ``azmanagers-expires`` tag by default: gc deletes it 30 days on."""
_POLL_S = 0.25
PROVIDER_CHECK_S = 5.0
"""While waiting for a VM's service, how often to ask the provider whether the VM failed."""


MAX_VM_NAME_CHARS = 40
"""The longest name a new detached VM may have. A name becomes the Azure VM's name (at most
64), its NIC's (``NAME-nic``, at most 80) and the common name of its service's certificate
(``azmanagers detached NAME``, at most 64: 44 for the name); 40 keeps a margin below all."""
_VM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_vm_name(name: str) -> str:
    """Return ``name`` when a new detached VM may have it; else a ConfigError saying why."""
    if not isinstance(name, str) or not _VM_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a detached VM name: use letters, digits, '-' and '_', starting "
            "with a letter or digit (no spaces or line breaks)."
        )
    if len(name) > MAX_VM_NAME_CHARS:
        raise ConfigError(
            f"the detached VM name {name[:20]}... is {len(name)} characters; use at most "
            f"{MAX_VM_NAME_CHARS} (it names the VM, its NIC and its certificate)."
        )
    return name


@dataclass(frozen=True)
class DetachedVM(VMRecord):
    """A VM running the detached service, as the caller records it.

    Its record (``state/detached/<name>.json``, mode 0600) holds where its service listens,
    the service's certificate (pinned) and its bearer token, so any process of the same user
    can reach it later (``DetachedJob.attach``). The VM itself keeps only the token's hash.
    """

    def client(self) -> ServiceClient:
        """An HTTPS client of the VM's service (one per VM and process: it keeps its
        connection alive between requests)."""
        return _client_for(
            ServiceAddress(self.name, self.host, self.port, self.cert, self.fingerprint, self.token)
        )

    def ping(self) -> bool:
        """True when the service answers."""
        if not self.host:
            return False
        try:
            return self.client().ping(timeout_s=5.0).ok
        except DetachedServiceError:
            return False

    def service_info(self) -> ServiceInfo:
        """The VM as its service describes it (name, versions, CPUs, running jobs)."""
        return self.client().vm_info()

    def info(self) -> dict[str, Any]:
        """``service_info()`` as a dict (name, azmanagers, python, cpus, started_at,
        running_jobs)."""
        return self.service_info().to_json()

    def summary(self, answers: bool | None = None, state: str = "") -> VMSummary:
        """The record without its secrets, for listings (``answers``: did it ping;
        ``state``: what was seen of it, see ``VMSummary.state``)."""
        return VMSummary(
            name=self.name,
            template=self.template,
            provider=self.provider,
            host=self.host,
            port=self.port,
            fingerprint=self.fingerprint,
            status=self.status,
            created_at=self.created_at,
            updated_at=self.updated_at,
            answers=answers,
            state=state or self.status,
        )


@dataclass(frozen=True)
class VMSummary:
    """A detached VM as listings show it: no token."""

    name: str
    template: str
    provider: str
    host: str
    port: int
    fingerprint: str
    status: str
    created_at: float
    updated_at: float
    answers: bool | None = None
    state: str = ""
    """What was seen of the VM when listed: ``up`` (its service answered), ``down`` (recorded
    up, no answer), ``booting``/``stopped``/``failed`` (the provider's view of a VM whose
    service never answered), ``gone`` (the provider has no such VM: ``rmproc`` forgets it),
    else the record's status (the provider could not be asked)."""


@functools.lru_cache(maxsize=64)
def _client_for(address: ServiceAddress) -> ServiceClient:
    return ServiceClient(address)


_STORE = RecordStore(DETACHED_VMS, DetachedVM)


def records_dir() -> Path:
    """Where the caller keeps its detached VMs' records."""
    return _STORE.folder


def save_vm(vm: DetachedVM) -> DetachedVM:
    """Write the VM's record (0600: it holds the token); return it as written."""
    return _STORE.save(vm)


def load_vm(name: str) -> DetachedVM:
    """Read a VM's record; ConfigError when there is none."""
    found = _STORE.load(name)
    if found is None:
        known = ", ".join(list_vm_names()) or "none"
        raise ConfigError(
            f"no detached VM named {name!r} is recorded on this machine (known: {known}). "
            "Create one with addproc() or `azm vm create`."
        )
    return found


def forget_vm(name: str, only_token: str | None = None) -> None:
    """Delete the VM's record (with ``only_token``: only if the record holds that token,
    i.e. it is the one this process wrote)."""
    if only_token is None:
        _STORE.delete(name)
    else:
        _STORE.delete(name, only=lambda found: found.token == only_token)


def list_vm_names() -> list[str]:
    """The names of the recorded detached VMs."""
    return _STORE.names()


def provider_of(template: str) -> Provider:
    """The provider of a VM template."""
    from azmanagers.config.template_schema import template_provider
    from azmanagers.config.templates import load_template_vm
    from azmanagers.providers import get_provider

    tmpl = load_template_vm(template)
    return get_provider(template_provider(tmpl), tmpl)


def service_payload(
    name: str, local: bool, port: int, pair: KeyPair, token: str, self_delete: str
) -> dict[str, Any]:
    """The boot payload of a VM running the service (a detached VM, a head): its name, where
    it listens, its key pair, the hash of its token and how it may delete itself."""
    return {
        "name": name,
        "host": "127.0.0.1" if local else "",  # on a VM: its own address
        "port": port,
        "tls": {"cert": pair.cert, "key": pair.key},
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        "self_delete": self_delete,
    }


def free_local_port() -> int:
    """A free TCP port on loopback for a local process-VM's service, which binds it a moment
    later: one below Linux's ephemeral range (32768 and up), so that no port 0 bind or
    outgoing connection of another process can take it in between."""
    for _ in range(PORT_TRIES):
        port = secrets.randbelow(SERVICE_PORTS[1] - SERVICE_PORTS[0]) + SERVICE_PORTS[0]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ProviderError(
        f"no free port between {SERVICE_PORTS[0]} and {SERVICE_PORTS[1]} on 127.0.0.1 after "
        f"{PORT_TRIES} tries; stop some local VMs"
    )


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

    name = check_vm_name(name) if name is not None else f"azm-{secrets.token_hex(3)}"
    if _STORE.exists(name):
        raise ConfigError(
            f"a detached VM named {name!r} exists already; rmproc it or pick another name."
        )
    tmpl = load_template_vm(template)
    provider_name = template_provider(tmpl)
    provider = get_provider(provider_name, tmpl)
    local = provider_name == "local"
    nic: dict[str, Any] = {}
    if not local:
        nic_name = nic_template or first_nic_template()
        nic = load_template_nic(nic_name)
    pair = make_self_signed(f"azmanagers detached {name}")
    token = secrets.token_urlsafe(32)
    port = free_local_port() if local else AZURE_SERVICE_PORT
    payload = service_payload(name, local, port, pair, token, self_delete_method(local, tmpl))
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
    # Recorded before the cloud call, so that a crash part-way leaves a record to rmproc; the
    # record is created only if there is none: it reserves the name.
    reserved = _STORE.create(
        DetachedVM(
            name=name,
            template=template,
            provider=provider_name,
            host="",
            port=port,
            cert=pair.cert,
            fingerprint=fingerprint(pair.cert),
            token=token,
            created_at=time.time(),
            status="creating",
        )
    )
    if reserved is None:
        raise ConfigError(
            f"a detached VM named {name!r} exists already (another create took the name); "
            "rmproc it or pick another name."
        )
    vm = reserved
    try:
        info = provider.create_vm(spec)
    except Exception:
        forget_vm(name, only_token=token)  # the provider made no VM (or cleaned up)
        raise
    # Interrupted (Ctrl-C) during the call, the VM may exist: the record stays ``creating``
    # so that rmproc can delete it.
    vm = save_vm(replace(vm, host=info.address, status="booting"))
    limit = timeout or (LOCAL_READY_TIMEOUT_S if local else AZURE_READY_TIMEOUT_S)
    try:
        _wait_ready(vm, provider, limit, progress)
    except (DetachedServiceError, WaitTimeoutError):
        save_vm(replace(vm, status="failed"))  # kept: rmproc deletes the VM
        raise
    # Interrupted while it boots, the VM runs on: the record stays ``booting`` (list_vms
    # records it ``up`` once it answers).
    return save_vm(replace(vm, status="up"))


def self_delete_method(local: bool, template: Mapping[str, Any]) -> str:
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
    return bool(self_delete_method(template_provider(tmpl) == "local", tmpl))


def first_nic_template() -> str:
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
    record = load_vm(vm) if isinstance(vm, str) else vm
    provider = provider_of(record.template)
    if _STORE.exists(record.name):
        save_vm(replace(record, status="deleting"))
    provider.delete_vm(record.name)
    forget_vm(record.name)
