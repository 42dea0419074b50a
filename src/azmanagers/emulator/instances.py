"""Emulated VMs that run their custom data as process-VMs, and the IMDS they ask."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azmanagers.emulator import cloudinit, guest_image, stock_image
from azmanagers.emulator.guest_commands import POWERED_OFF
from azmanagers.providers import ProcessVM, process_vm_runtime


@dataclass
class VMIdentity:
    """What IMDS tells a VM about itself."""

    name: str
    vm_id: str
    subscription: str
    resource_group: str
    scaleset: str
    location: str
    priority: str = "Regular"
    events: list[dict[str, Any]] = field(default_factory=list)
    stock_image: bool = False
    """Booted from a market image: azmanagers is not installed (see ``stock_image``)."""
    address: str = ""
    """The VM's private address (its NIC's); a loopback address in the emulator."""
    managed_identity: bool = False
    """A system-assigned identity: IMDS hands out an ARM token (the emulator's)."""


def is_market_image(profile: Any) -> bool:
    """Tell whether a VM profile boots a market image (publisher, offer, sku), not a gallery one."""
    storage = profile.get("storageProfile") if isinstance(profile, dict) else None
    ref = storage.get("imageReference") if isinstance(storage, dict) else None
    return isinstance(ref, dict) and "publisher" in ref and "id" not in ref


class ImdsServer:
    """Plain HTTP on 127.0.0.1, like IMDS on 169.254.169.254: one path prefix per VM.

    A VM's ``AZMANAGERS_IMDS_ENDPOINT`` is ``http://127.0.0.1:PORT/vm/<key>``; requests must
    carry ``Metadata: true``, as on Azure.
    """

    def __init__(self) -> None:
        self.issue_token: Callable[[VMIdentity, str], dict[str, Any]] | None = None
        """IMDS's token answer for a VM's managed identity and a resource (set once ARM
        listens: ``SignIn.managed_identity_token``)."""
        self.vms: dict[str, VMIdentity] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _imds_handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def register(self, identity: VMIdentity) -> str:
        """Add a VM; return its IMDS endpoint."""
        key = secrets.token_hex(8)
        with self._lock:
            self.vms[key] = identity
        return f"http://127.0.0.1:{self.port}/vm/{key}"

    def forget(self, endpoint: str) -> None:
        """Remove a VM."""
        with self._lock:
            self.vms.pop(endpoint.rsplit("/", 1)[-1], None)

    def identity(self, key: str) -> VMIdentity | None:
        """Return the VM behind a key."""
        with self._lock:
            return self.vms.get(key)

    def stop(self) -> None:
        """Stop serving."""
        self._httpd.shutdown()
        self._httpd.server_close()


def _imds_handler(server: ImdsServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # headers and body go out at once

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the default log."""

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            segments = parts.path.strip("/").split("/")
            identity = server.identity(segments[1]) if len(segments) > 2 else None
            if self.headers.get("Metadata", "").lower() != "true":
                self._reply(400, {"error": "Bad request. Required metadata header not specified"})
            elif identity is None:
                self._reply(404, {"error": "Not found"})
            elif segments[2:] == ["metadata", "instance"]:
                self._reply(200, _instance_document(identity))
            elif segments[2:] == ["metadata", "identity", "oauth2", "token"]:
                resource = parse_qs(parts.query).get("resource", [""])[0]
                if not identity.managed_identity or server.issue_token is None:
                    self._reply(
                        400, {"error": "invalid_request", "error_description": "Identity not found"}
                    )
                elif not resource:
                    self._reply(
                        400,
                        {
                            "error": "invalid_request",
                            "error_description": "Required query variable 'resource' is missing",
                        },
                    )
                else:
                    self._reply(200, server.issue_token(identity, resource))
            elif segments[2:] == ["metadata", "scheduledevents"]:
                self._reply(
                    200, {"DocumentIncarnation": len(identity.events), "Events": identity.events}
                )
            else:
                self._reply(404, {"error": "Not found"})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return _Handler


def _instance_document(identity: VMIdentity) -> dict[str, Any]:
    return {
        "compute": {
            "name": identity.name,
            "vmId": identity.vm_id,
            "subscriptionId": identity.subscription,
            "resourceGroupName": identity.resource_group,
            "vmScaleSetName": identity.scaleset,
            "location": identity.location,
            "priority": identity.priority,
        },
        "network": {"interface": []},
    }


def _own_loopback(address: str) -> str:
    """The VM's address when it is a loopback one (VMs that run here), else ``127.0.0.1``."""
    try:
        if ipaddress.ip_address(address).is_loopback:
            return address
    except ValueError:
        pass
    return "127.0.0.1"


class ProcessRunner:
    """Starts an emulated VM's custom data as a process-VM, and stops it when deleted.

    Each VM is known by its ``vmId`` (its key here), which no other VM shares: VM names are
    unique per resource group only, and a deleted VM's name may be given to a new VM at
    once. Each VM boots in a folder of its own, ``<name>-<start of its vmId>``.
    """

    arm_environment: dict[str, str]
    """ARM's endpoint and CA for the VMs (set once ARM listens), as a VM finds Azure's."""

    def __init__(self, folder: Path, imds: ImdsServer) -> None:
        self.arm_environment = {}
        self.folder = folder
        self.imds = imds
        self._runtime = process_vm_runtime()
        self._running: dict[str, tuple[ProcessVM, str]] = {}
        self.identities: dict[str, VMIdentity] = {}
        """The running VMs' identities, by ``vmId``."""
        self._folders: dict[str, Path] = {}
        """Every VM's folder by ``vmId``, also once it is stopped (its boot log stays)."""
        self._lock = threading.Lock()
        self._stoppers: list[threading.Thread] = []
        self._stopping: dict[str, threading.Thread] = {}

    def folder_of(self, vm_id: str) -> Path | None:
        """The folder a VM booted in, or None for a VM that never ran here."""
        with self._lock:
            return self._folders.get(vm_id)

    def _new_folder(self, identity: VMIdentity) -> Path:
        """A folder no VM used (lock held), named after the VM and its ``vmId``."""
        shown = re.sub(r"[^A-Za-z0-9._-]", "_", identity.name)[:64]  # a safe file name
        base = f"{shown}-{identity.vm_id[:8]}"
        folder, count = self.folder / base, 1
        while folder.exists():  # two vmIds that begin alike
            count += 1
            folder = self.folder / f"{base}-{count}"
        folder.mkdir(parents=True, mode=0o700)
        return folder

    def start(self, identity: VMIdentity, custom_data: str) -> None:
        """Boot a VM: run its custom data in its own folder and process group."""
        if not identity.vm_id:
            raise ValueError(f"VM {identity.name} has no vmId to run under.")
        with self._lock:
            if identity.vm_id in self._running:
                raise ValueError(f"VM {identity.name} ({identity.vm_id}) already runs.")
            instance_dir = self._new_folder(identity)
            self._folders[identity.vm_id] = instance_dir
        endpoint = self.imds.register(identity)
        extra = {
            "AZMANAGERS_IMDS_ENDPOINT": endpoint,
            # all emulated VMs share this machine: their workers listen on loopback, on the
            # VM's own (loopback) address when it has one, as a VM listens on its NIC's
            "AZMANAGERS_WORKER_HOST": _own_loopback(identity.address),
        }
        if identity.address:
            extra["AZMANAGERS_VM_ADDRESS"] = identity.address
        extra.update(self.arm_environment)
        with self._lock:
            if identity.stock_image:
                extra.update(stock_image.prepare(self.folder / "stock-image").environment())
            # the image's docker and shutdown (the VM's own, never this machine's) come first
            image_bin = guest_image.prepare(self.folder / "image")
        extra["PATH"] = f"{image_bin}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
        if cloudinit.is_cloud_config(custom_data):
            custom_data = cloudinit.boot_script(custom_data, identity.vm_id)
        try:
            vm = self._runtime.boot(instance_dir, custom_data, extra)
        except BaseException:
            self.imds.forget(endpoint)
            raise
        with self._lock:
            self._running[identity.vm_id] = (vm, endpoint)
            self.identities[identity.vm_id] = identity

    def stop(self, vm_id: str, *, wait: bool = False) -> None:
        """Stop a VM's processes (in the background unless ``wait``)."""
        with self._lock:
            entry = self._running.pop(vm_id, None)
            identity = self.identities.pop(vm_id, None)
        if entry is None:
            return
        vm, endpoint = entry
        self.imds.forget(endpoint)
        if wait:
            vm.stop()
            return
        name = identity.name if identity is not None else vm_id
        thread = threading.Thread(target=vm.stop, name=f"azm-emu-stop-{name}", daemon=True)
        thread.start()
        with self._lock:
            self._stoppers.append(thread)
            self._stopping[vm_id] = thread

    def stopping(self, vm_id: str) -> bool:
        """Whether a deleted VM's processes are still being stopped."""
        with self._lock:
            thread = self._stopping.get(vm_id)
            if thread is not None and not thread.is_alive():
                del self._stopping[vm_id]
                thread = None
        return thread is not None

    def power_state(self, vm_id: str) -> str:
        """Return a VM's power state: "stopped" once its boot script failed or its guest
        powered it off (``shutdown``), else "running".

        On a real VM a failed boot script powers the VM off (so the cluster sees it in its
        one list call); here the script's non-zero exit status stands for that.
        """
        folder = self.folder_of(vm_id)
        if folder is None:  # a VM that runs nothing here (faults.idle_scaleset_instances)
            return "running"
        if (folder / POWERED_OFF).exists():  # its guest ran shutdown
            return "stopped"
        status = self._runtime.exit_status(folder)
        return "stopped" if status not in (None, 0) else "running"

    def boot_log(self, vm_id: str, tail_bytes: int) -> str:
        """Return the end of a VM's boot log (what a serial console would show)."""
        folder = self.folder_of(vm_id)
        return "" if folder is None else self._runtime.boot_log(folder, tail_bytes)

    def stop_all(self) -> None:
        """Stop every VM and wait for the stops to finish."""
        with self._lock:
            keys = list(self._running)
        for vm_id in keys:
            self.stop(vm_id, wait=True)
        with self._lock:
            stoppers, self._stoppers = self._stoppers, []
        for thread in stoppers:
            thread.join(timeout=30)
