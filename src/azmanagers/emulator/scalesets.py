"""The emulator's ARM state: resource groups, scale sets and their VMs, operations, views."""

from __future__ import annotations

import base64
import email.utils
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azmanagers.emulator import flexible
from azmanagers.emulator.addresses import AddressPool
from azmanagers.emulator.faults import NEVER_JOIN_SCRIPT, Faults
from azmanagers.emulator.instances import ProcessRunner, VMIdentity, is_market_image
from azmanagers.emulator.server import ArmError, Call, Request
from azmanagers.emulator.shapes import (
    new_uuid,
)

COMPUTE = "Microsoft.Compute"
NETWORK = "Microsoft.Network"


MAX_OPERATIONS = 20_000
"""Operations a long-lived emulator remembers (each answers its poll until forgotten)."""


@dataclass
class ScaleSetVM:
    """One instance of a scale set."""

    instance_id: str
    name: str
    created_at: float
    provisioning_state: str = "Succeeded"
    power_state: str = "running"
    priority: str = "Regular"
    seq: int = 0
    """Creation order: shrinking by capacity removes the newest first."""
    vm_id: str = field(default_factory=new_uuid)
    """Azure's ``vmId``, also what the VM's IMDS answers."""
    address: str = ""
    """Its NIC's private address."""


@dataclass
class ScaleSet:
    """A scale set as the emulator keeps it."""

    sub: str
    rg: str
    name: str
    body: dict[str, Any]
    vms: dict[str, ScaleSetVM] = field(default_factory=dict)
    """By instance id: a number in Uniform mode, the VM's name in Flexible mode."""
    next_instance: int = 0
    unique_id: str = field(default_factory=new_uuid)
    created_at: float = field(default_factory=time.time)
    generation: int = 1
    """Bumped at each change of the model: the scale set's etag."""

    @property
    def flexible(self) -> bool:
        """True in Flexible orchestration mode (a regular/spot mix needs it)."""
        return flexible.is_flexible(self.body)

    @property
    def id(self) -> str:
        """The scale set's ARM resource id."""
        return (
            f"/subscriptions/{self.sub}/resourceGroups/{self.rg}/providers/{COMPUTE}"
            f"/virtualMachineScaleSets/{self.name}"
        )


@dataclass
class Operation:
    """A long-running operation; the emulator completes them at once (Succeeded)."""

    id: str
    status: str = "Succeeded"
    started: float = field(default_factory=time.time)
    busy: Callable[[], bool] | None = None
    """While this says True the operation is InProgress (a deleted VM still stopping)."""

    def current_status(self) -> str:
        """InProgress while ``busy``, then ``status``."""
        return "InProgress" if self.busy is not None and self.busy() else self.status


class ArmState:
    """The emulated resources, guarded by one lock."""

    def evict(self, names: list[str], notice_s: float = 30.0) -> None:
        """Evict spot VMs: a Preempt event in their IMDS now, deletion after ``notice_s``.

        As with ``evictionPolicy: Delete``, the VM and its capacity are gone afterwards.
        """
        not_before = time.time() + notice_s
        with self.lock:
            for name in names:
                _, vm = self._find_vm(name)  # raises for an unknown VM
                if vm.priority != "Spot":
                    raise ArmError(
                        409,
                        "OperationNotAllowed",
                        f"VM {name} is not a spot VM: only spot VMs are evicted.",
                    )
            for name in names:
                vm_id = self._find_vm(name)[1].vm_id
                identity = self.runner.identities.get(vm_id) if self.runner else None
                if identity is not None:
                    identity.events.append(
                        {
                            "EventId": str(uuid.uuid4()),
                            "EventType": "Preempt",
                            "ResourceType": "VirtualMachine",
                            "Resources": [name],
                            "EventStatus": "Scheduled",
                            "NotBefore": email.utils.formatdate(not_before, usegmt=True),
                            "Description": "Spot eviction",
                            "EventSource": "Platform",
                            "DurationInSeconds": -1,
                        }
                    )
                self.faults.injected["evicted"] = self.faults.injected.get("evicted", 0) + 1
        timer = threading.Timer(notice_s, self._delete_evicted, args=(list(names),))
        timer.daemon = True
        timer.start()

    def _delete_evicted(self, names: list[str]) -> None:
        with self.lock:
            for name in names:
                try:
                    scaleset, vm = self._find_vm(name)
                except ArmError:
                    continue  # already deleted
                remove_instance(self, scaleset, vm.instance_id)
                scaleset.body["sku"]["capacity"] = len(scaleset.vms)

    def _find_vm(self, name: str) -> tuple[ScaleSet, ScaleSetVM]:
        """Return the scale set and the VM named ``name`` (any scale set, either mode)."""
        for scaleset in self.scalesets.values():
            for vm in scaleset.vms.values():
                if vm.name == name:
                    return scaleset, vm
        raise ArmError(404, "NotFound", f"No VM named {name}.")

    def __init__(self, runner: ProcessRunner | None = None) -> None:
        self.runner = runner
        """Starts each VM's custom data as a process-VM; None: VMs are records only."""
        self.faults = Faults()
        self.blob_key = secrets.token_bytes(32)
        self.lock = threading.RLock()
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        self.scalesets: dict[tuple[str, str, str], ScaleSet] = {}
        self.vms: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.nics: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.others: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        """Every other resource (networks, NSGs, public IPs, disks), keyed by lower-case
        (subscription, group, type such as ``microsoft.network/publicipaddresses``, name); each
        body has Azure's ``id``, ``name``, ``type``, ``location`` and ``tags``."""
        self.operations: dict[str, Operation] = {}
        self.call_log: Callable[[int], tuple[int, list[Call]]] | None = None
        """The server's call log (set by whoever builds the server), served to admins."""
        self.tenant_id: str | None = None
        """The tenant the emulator's identities belong to (set with the server's sign-in)."""
        self.addresses = AddressPool(running=runner is not None)
        """NIC addresses: loopback ones of this emulator's own when VMs run."""

    # -- helpers -------------------------------------------------------------------------
    def group(self, sub: str, rg: str) -> dict[str, Any]:
        """Return a resource group or raise ResourceGroupNotFound."""
        found = self.groups.get((sub.lower(), rg.lower()))
        if found is None:
            raise ArmError(
                404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found."
            )
        return found

    def scaleset(self, sub: str, rg: str, name: str) -> ScaleSet:
        """Return a scale set or raise ResourceNotFound."""
        self.group(sub, rg)
        found = self.scalesets.get((sub.lower(), rg.lower(), name.lower()))
        if found is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{COMPUTE}/virtualMachineScaleSets/{name}' under resource group "
                f"'{rg}' was not found.",
            )
        return found

    def operation(
        self, req: Request, sub: str, location: str, busy: Callable[[], bool] | None = None
    ) -> dict[str, str]:
        """Start an operation; return the headers that point a poller at it, under the
        request's own resource provider (Microsoft.Network for a NIC). It is InProgress while
        ``busy`` says so."""
        op = Operation(id=str(uuid.uuid4()), busy=busy)
        self.operations[op.id] = op
        if len(self.operations) > MAX_OPERATIONS:  # the oldest are long polled: forget them
            for old in list(self.operations)[: MAX_OPERATIONS // 4]:
                del self.operations[old]
        api = req.query["api-version"]
        provider = NETWORK if f"/providers/{NETWORK}/".lower() in req.path.lower() else COMPUTE
        base = f"{req.base_url}/subscriptions/{sub}/providers/{provider}/locations/{location}"
        headers = {
            "Azure-AsyncOperation": f"{base}/operations/{op.id}?api-version={api}",
            "Retry-After": "0",
        }
        # as ARM: a PUT or PATCH names its status only (the poller then GETs the resource);
        # a DELETE or POST also a Location, whose GET answers 202, then 200 with the result
        if req.method in ("DELETE", "POST"):
            headers["Location"] = (
                f"{base}/operationResults/{op.id}?api-version={api}"
                if provider == NETWORK
                else f"{base}/operations/{op.id}?monitor=true&api-version={api}"
            )
        return headers


def custom_data(scaleset: ScaleSet) -> str:
    profile = scaleset.body.get("properties", {}).get("virtualMachineProfile", {})
    encoded = profile.get("osProfile", {}).get("customData") or ""
    try:
        return base64.b64decode(encoded).decode()
    except (ValueError, UnicodeDecodeError):
        raise ArmError(400, "InvalidParameter", "osProfile.customData is not base64.") from None


def scale_to(state: ArmState, scaleset: ScaleSet, capacity: int) -> None:
    """Add or remove instances (newest first) until there are ``capacity``."""
    profile = scaleset.body.get("properties", {}).get("virtualMachineProfile", {})
    while len(scaleset.vms) < capacity:
        index = scaleset.next_instance
        scaleset.next_instance += 1
        if scaleset.flexible:
            name = iid = flexible.vm_name(scaleset)
            priority = flexible.next_priority(scaleset)
        else:
            iid, name = str(index), f"{scaleset.name}_{index}"
            spot = str(profile.get("priority", "Regular")).lower() == "spot"
            priority = "Spot" if spot else "Regular"
        vm = ScaleSetVM(iid, name, time.time(), priority=priority, seq=index)
        # an address of its own, as each instance's NIC has on Azure (its worker listens
        # there: MPI ranks on two instances are on two hosts)
        vm.address = state.addresses.next()
        scaleset.vms[iid] = vm
        fault = state.faults.take_vm_fault()
        if fault == "fail":
            vm.provisioning_state = "Failed"
            vm.power_state = "stopped"
        elif state.runner is not None and not state.faults.idle_scaleset_instances:
            script = NEVER_JOIN_SCRIPT if fault == "never_join" else custom_data(scaleset)
            if fault == "slow_boot":
                script = state.faults.slowed(script)
            state.runner.start(
                VMIdentity(
                    name=vm.name,
                    vm_id=vm.vm_id,
                    subscription=scaleset.sub,
                    resource_group=scaleset.rg,
                    scaleset=scaleset.name,
                    location=str(scaleset.body.get("location", "")),
                    priority=vm.priority,
                    stock_image=is_market_image(profile),
                    address=vm.address,
                ),
                script,
            )
    while len(scaleset.vms) > capacity:
        newest = max(scaleset.vms.values(), key=lambda vm: vm.seq)
        remove_instance(state, scaleset, newest.instance_id)
    scaleset.body["sku"]["capacity"] = capacity


def remove_instance(state: ArmState, scaleset: ScaleSet, instance_id: str) -> None:
    vm = scaleset.vms.pop(instance_id)
    state.addresses.give_back(vm.address)
    if state.runner is not None:
        state.runner.stop(vm.vm_id)


def capacity_of(body: Any) -> int:
    try:
        capacity = body["sku"]["capacity"]
    except (KeyError, TypeError):
        raise ArmError(400, "InvalidParameter", "sku.capacity is required.") from None
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
        raise ArmError(400, "InvalidParameter", f"sku.capacity must be >= 0, got {capacity!r}.")
    return capacity
