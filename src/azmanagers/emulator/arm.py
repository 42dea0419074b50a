"""The ARM part of the emulator: resource groups, scale sets and their VMs, operations."""

from __future__ import annotations

import base64
import copy
import datetime
import email.utils
import hmac
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from azmanagers.emulator import flexible
from azmanagers.emulator.catalog import SKUS, SKUS_BY_NAME, sku_document, usage_document
from azmanagers.emulator.faults import NEVER_JOIN_SCRIPT, Faults
from azmanagers.emulator.instances import ProcessRunner, VMIdentity, is_market_image
from azmanagers.emulator.server import ArmError, Request, Response, Router

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_VMSS = _RG + r"/providers/Microsoft\.Compute/virtualMachineScaleSets"
COMPUTE = "Microsoft.Compute"


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
                identity = self.runner.identities.get(name) if self.runner else None
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
                _remove(self, scaleset, vm.instance_id)
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
        self.operations: dict[str, Operation] = {}

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

    def operation(self, req: Request, sub: str, location: str) -> dict[str, str]:
        """Start an operation; return the headers that point the SDK's poller at it."""
        op = Operation(id=str(uuid.uuid4()))
        self.operations[op.id] = op
        api = req.query["api-version"]
        url = (
            f"{req.base_url}/subscriptions/{sub}/providers/{COMPUTE}/locations/{location}"
            f"/operations/{op.id}?api-version={api}"
        )
        return {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "0"}


def _custom_data(scaleset: ScaleSet) -> str:
    profile = scaleset.body.get("properties", {}).get("virtualMachineProfile", {})
    encoded = profile.get("osProfile", {}).get("customData") or ""
    try:
        return base64.b64decode(encoded).decode()
    except (ValueError, UnicodeDecodeError):
        raise ArmError(400, "InvalidParameter", "osProfile.customData is not base64.") from None


def _scale_to(state: ArmState, scaleset: ScaleSet, capacity: int) -> None:
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
        scaleset.vms[iid] = vm
        fault = state.faults.take_vm_fault()
        if fault == "fail":
            vm.provisioning_state = "Failed"
            vm.power_state = "stopped"
        elif state.runner is not None:
            script = NEVER_JOIN_SCRIPT if fault == "never_join" else _custom_data(scaleset)
            if fault == "slow_boot":
                script = state.faults.slowed(script)
            state.runner.start(
                VMIdentity(
                    name=vm.name,
                    vm_id=str(uuid.uuid4()),
                    subscription=scaleset.sub,
                    resource_group=scaleset.rg,
                    scaleset=scaleset.name,
                    location=str(scaleset.body.get("location", "")),
                    priority=vm.priority,
                    stock_image=is_market_image(profile),
                ),
                script,
            )
    while len(scaleset.vms) > capacity:
        newest = max(scaleset.vms.values(), key=lambda vm: vm.seq)
        _remove(state, scaleset, newest.instance_id)
    scaleset.body["sku"]["capacity"] = capacity


def _remove(state: ArmState, scaleset: ScaleSet, instance_id: str) -> None:
    vm = scaleset.vms.pop(instance_id)
    if state.runner is not None:
        state.runner.stop(vm.name)


def _capacity(body: Any) -> int:
    try:
        capacity = body["sku"]["capacity"]
    except (KeyError, TypeError):
        raise ArmError(400, "InvalidParameter", "sku.capacity is required.") from None
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
        raise ArmError(400, "InvalidParameter", f"sku.capacity must be >= 0, got {capacity!r}.")
    return capacity


def _vmss_view(scaleset: ScaleSet, state: str = "Succeeded") -> dict[str, Any]:
    body = copy.deepcopy(scaleset.body)
    body["id"] = scaleset.id
    body["name"] = scaleset.name
    body["type"] = f"{COMPUTE}/virtualMachineScaleSets"
    body.setdefault("properties", {})["provisioningState"] = state
    return body


def vm_view(state: ArmState, scaleset: ScaleSet, vm: ScaleSetVM, expand: bool) -> dict[str, Any]:
    """A scale set's VM as ARM shows it: a scale-set VM (Uniform) or a VM (Flexible)."""
    if expand and state.runner is not None and vm.power_state == "running":
        vm.power_state = state.runner.power_state(vm.name)
    props: dict[str, Any] = {
        "provisioningState": vm.provisioning_state,
        "latestModelApplied": True,
        "timeCreated": datetime.datetime.fromtimestamp(vm.created_at, datetime.timezone.utc)
        .isoformat()
        .replace("+00:00", "Z"),
    }
    if expand:
        props["instanceView"] = {
            "statuses": [
                {"code": f"ProvisioningState/{vm.provisioning_state.lower()}"},
                {"code": f"PowerState/{vm.power_state}"},
            ]
        }
    if scaleset.flexible:
        props["priority"] = vm.priority
        props["virtualMachineScaleSet"] = {"id": scaleset.id}
        return {
            "id": f"/subscriptions/{scaleset.sub}/resourceGroups/{scaleset.rg}/providers/"
            f"{COMPUTE}/virtualMachines/{vm.name}",
            "name": vm.name,
            "type": f"{COMPUTE}/virtualMachines",
            "location": scaleset.body.get("location", ""),
            "properties": props,
        }
    return {
        "id": f"{scaleset.id}/virtualMachines/{vm.instance_id}",
        "name": vm.name,
        "instanceId": vm.instance_id,
        "type": f"{COMPUTE}/virtualMachineScaleSets/virtualMachines",
        "location": scaleset.body.get("location", ""),
        "tags": scaleset.body.get("tags", {}),
        "properties": props,
    }


def _uniform_only(scaleset: ScaleSet, what: str) -> None:
    if scaleset.flexible:
        raise ArmError(
            400,
            "OperationNotAllowed",
            f"{what} is not supported for scale set {scaleset.name} in orchestrationMode "
            "Flexible: use the virtualMachines API (list it with $filter="
            "'virtualMachineScaleSet/id' eq '<scale set id>').",
        )


_FILTER = re.compile(
    r"^\s*tagName eq '(?P<name>[^']*)'(?:\s+and\s+tagValue eq '(?P<value>[^']*)')?\s*$",
    re.IGNORECASE,
)


BOOT_LOG_MAX_BYTES = 1 << 20


def _blob_signature(state: ArmState, name: str) -> str:
    return hmac.new(state.blob_key, name.encode(), "sha256").hexdigest()


def _location_filter(text: str) -> str | None:
    match = re.match(r"^\s*location eq '(?P<loc>[^']*)'\s*$", text, re.IGNORECASE)
    return match["loc"] if match else None


def _tag_filter(text: str) -> tuple[str | None, str | None]:
    """Parse ARM's ``tagName eq 'n' [and tagValue eq 'v']`` filter (the one form we use)."""
    if not text:
        return None, None
    match = _FILTER.match(text)
    if match is None:
        raise ArmError(400, "InvalidFilterInQueryString", f"Unsupported $filter: {text!r}.")
    return match["name"], match["value"]


def boot_log_links(state: ArmState, req: Request, vm_name: str) -> Response:
    """The answer to retrieveBootDiagnosticsData: a signed (SAS-style) serial log URL."""
    url = f"{req.base_url}/azmanagers-blob/serial/{vm_name}?sig={_blob_signature(state, vm_name)}"
    return Response(200, {"consoleScreenshotBlobUri": None, "serialConsoleLogBlobUri": url})


def build_admin_router(state: ArmState) -> Router:
    """Return the emulator's own routes: read and set faults."""
    router = Router()

    def get_faults(req: Request) -> Response:
        del req
        return Response(200, state.faults.snapshot())

    def set_faults(req: Request) -> Response:
        if not isinstance(req.body, dict):
            raise ArmError(400, "InvalidParameter", "POST a JSON object of fault settings.")
        return Response(200, state.faults.update(req.body))

    def evict(req: Request) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        names = body.get("vms")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ArmError(400, "InvalidParameter", 'POST {"vms": [names], "notice_s": 30}.')
        with state.lock:
            for name in names:
                state._find_vm(name)
        state.evict(names, float(body.get("notice_s", 30.0)))
        return Response(202, {"evicting": names})

    def serial_log(req: Request) -> Response:
        # A SAS-style blob URL: the signature is the credential, not a bearer token.
        name, sig = req.match["vm"], req.query.get("sig", "")
        if state.runner is None or not secrets.compare_digest(sig, _blob_signature(state, name)):
            raise ArmError(
                403, "AuthenticationFailed", "Server failed to authenticate the request."
            )
        return Response(200, state.runner.boot_log(name, BOOT_LOG_MAX_BYTES))

    router.add("GET", r"/azmanagers-blob/serial/(?P<vm>[^/]+)", serial_log)
    router.add("POST", r"/azmanagers-admin/evict", evict)
    router.add("GET", r"/azmanagers-admin/faults", get_faults)
    router.add("POST", r"/azmanagers-admin/faults", set_faults)
    return router


def build_router(state: ArmState) -> Router:
    """Return the ARM routes over ``state``."""
    router = Router()

    def put_group(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match["rg"]
        if not isinstance(req.body, dict) or not req.body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        with state.lock:
            existed = (sub.lower(), rg.lower()) in state.groups
            group = {
                "id": f"/subscriptions/{sub}/resourceGroups/{rg}",
                "name": rg,
                "type": "Microsoft.Resources/resourceGroups",
                "location": req.body["location"],
                "tags": req.body.get("tags", {}),
                "properties": {"provisioningState": "Succeeded"},
            }
            state.groups[(sub.lower(), rg.lower())] = group
        return Response(200 if existed else 201, group)

    def get_group(req: Request) -> Response:
        with state.lock:
            return Response(200, state.group(req.match["sub"], req.match["rg"]))

    def put_vmss(req: Request) -> Response:
        sub, rg, name = req.match["sub"], req.match["rg"], req.match["name"]
        body = req.body
        if not isinstance(body, dict) or not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        capacity = _capacity(body)
        flexible.validate(body)
        with state.lock:
            state.group(sub, rg)
            key = (sub.lower(), rg.lower(), name.lower())
            existing = state.scalesets.get(key)
            if existing is not None and existing.flexible != flexible.is_flexible(body):
                raise ArmError(
                    409,
                    "PropertyChangeNotAllowed",
                    "Changing property 'orchestrationMode' is not allowed.",
                )
            scaleset = existing or ScaleSet(sub, rg, name, {})
            scaleset.body = copy.deepcopy(body)
            _scale_to(state, scaleset, capacity)
            state.scalesets[key] = scaleset
            headers = state.operation(req, sub, body["location"])
            view = _vmss_view(scaleset, "Updating" if existing else "Creating")
        return Response(200 if existing else 201, view, headers)

    def patch_vmss(req: Request) -> Response:
        sub, rg, name = req.match["sub"], req.match["rg"], req.match["name"]
        body = req.body if isinstance(req.body, dict) else {}
        with state.lock:
            scaleset = state.scaleset(sub, rg, name)
            if "sku" in body:
                _scale_to(
                    state, scaleset, _capacity({"sku": {**scaleset.body["sku"], **body["sku"]}})
                )
            if "tags" in body:
                scaleset.body["tags"] = dict(body["tags"] or {})
            headers = state.operation(req, sub, scaleset.body["location"])
            return Response(200, _vmss_view(scaleset, "Updating"), headers)

    def get_vmss(req: Request) -> Response:
        with state.lock:
            return Response(
                200,
                _vmss_view(state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])),
            )

    def list_vmss(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match["rg"]
        with state.lock:
            state.group(sub, rg)
            value = [
                _vmss_view(s)
                for (s_sub, s_rg, _), s in sorted(state.scalesets.items())
                if (s_sub, s_rg) == (sub.lower(), rg.lower())
            ]
        return Response(200, {"value": value})

    def delete_vmss(req: Request) -> Response:
        sub, rg, name = req.match["sub"], req.match["rg"], req.match["name"]
        with state.lock:
            state.group(sub, rg)
            scaleset = state.scalesets.pop((sub.lower(), rg.lower(), name.lower()), None)
            if scaleset is None:
                return Response(204)
            for iid in list(scaleset.vms):
                _remove(state, scaleset, iid)
            return Response(202, None, state.operation(req, sub, scaleset.body["location"]))

    def list_vms(req: Request) -> Response:
        expand = req.query.get("$expand", "").lower() == "instanceview"
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            _uniform_only(scaleset, "Listing scale-set VMs")
            value = [vm_view(state, scaleset, vm, expand) for _, vm in sorted(scaleset.vms.items())]
        return Response(200, {"value": value})

    def delete_instances(req: Request) -> Response:
        ids = (req.body or {}).get("instanceIds") if isinstance(req.body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ArmError(400, "InvalidParameter", "instanceIds must be a list of strings.")
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            unknown = [i for i in ids if i not in scaleset.vms]
            if unknown:
                raise ArmError(
                    404, "NotFound", f"Instances {', '.join(unknown)} are not in scale set."
                )
            for iid in ids:
                _remove(state, scaleset, iid)
            scaleset.body["sku"]["capacity"] = len(scaleset.vms)
            return Response(
                202, None, state.operation(req, req.match["sub"], scaleset.body["location"])
            )

    def boot_diagnostics(req: Request) -> Response:
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            _uniform_only(scaleset, "A scale-set VM's boot diagnostics")
            vm = scaleset.vms.get(req.match["iid"])
            if vm is None:
                raise ArmError(404, "NotFound", f"Instance {req.match['iid']} not found.")
        return boot_log_links(state, req, vm.name)

    def get_operation(req: Request) -> Response:
        with state.lock:
            op = state.operations.get(req.match["op"])
        if op is None:
            raise ArmError(404, "NotFound", f"Operation {req.match['op']} not found.")
        return Response(200, {"name": op.id, "status": op.status, "startTime": op.started})

    def list_resources(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match["rg"]
        name, value = _tag_filter(req.query.get("$filter", ""))
        with state.lock:
            state.group(sub, rg)
            found = []
            for (s_sub, s_rg, _), scaleset in sorted(state.scalesets.items()):
                if (s_sub, s_rg) != (sub.lower(), rg.lower()):
                    continue
                tags = scaleset.body.get("tags") or {}
                if name is not None and name not in tags:
                    continue
                if value is not None and tags.get(name) != value:
                    continue
                view = _vmss_view(scaleset)
                found.append(
                    {k: view[k] for k in ("id", "name", "type", "location") if k in view}
                    | {"tags": dict(tags)}
                )
            for (s_sub, s_rg, _), entry in sorted(
                list(state.vms.items()) + [(k, {"body": v}) for k, v in state.nics.items()]
            ):
                body = entry["body"]
                tags = body.get("tags") or {}
                if (s_sub, s_rg) != (sub.lower(), rg.lower()) or (
                    name is not None
                    and (name not in tags or (value is not None and tags[name] != value))
                ):
                    continue
                found.append(
                    {k: body[k] for k in ("id", "name", "type", "location")} | {"tags": dict(tags)}
                )
        return Response(200, {"value": found})

    def list_skus(req: Request) -> Response:
        location = _location_filter(req.query.get("$filter", ""))
        return Response(200, {"value": [sku_document(s, location or "any") for s in SKUS]})

    def list_usages(req: Request) -> Response:
        sub, location = req.match["sub"].lower(), req.match["loc"].lower()
        used: dict[str, int] = {}
        spot_used = 0
        with state.lock:
            for (s_sub, _, _), scaleset in state.scalesets.items():
                if s_sub != sub or str(scaleset.body.get("location", "")).lower() != location:
                    continue
                sku = SKUS_BY_NAME.get(str(scaleset.body["sku"].get("name", "")).lower())
                if sku is None:
                    continue
                spot = sum(1 for vm in scaleset.vms.values() if vm.priority == "Spot")
                regular = len(scaleset.vms) - spot
                used[sku.family] = used.get(sku.family, 0) + sku.vcpus * regular
                spot_used += sku.vcpus * spot
            family_limit = state.faults.family_cores_limit
            regional_limit = state.faults.regional_cores_limit
            spot_limit = state.faults.spot_cores_limit
        value = [
            usage_document("cores", "Total Regional vCPUs", sum(used.values()), regional_limit),
            usage_document(
                "lowPriorityCores", "Total Regional Low-priority vCPUs", spot_used, spot_limit
            ),
        ]
        for family in sorted({s.family for s in SKUS}):
            value.append(usage_document(family, family, used.get(family, 0), family_limit))
        return Response(200, {"value": value})

    router.add("GET", _SUB + r"/providers/Microsoft\.Compute/skus", list_skus)
    router.add(
        "GET", _SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/usages", list_usages
    )
    router.add("GET", _RG + r"/resources", list_resources)
    router.add("PUT", _RG, put_group)
    router.add("GET", _RG, get_group)
    router.add("GET", _VMSS, list_vmss)
    vmss = _VMSS + r"/(?P<name>[^/]+)"
    router.add("PUT", vmss, put_vmss)
    router.add("PATCH", vmss, patch_vmss)
    router.add("GET", vmss, get_vmss)
    router.add("DELETE", vmss, delete_vmss)
    router.add("GET", vmss + r"/virtualMachines", list_vms)
    router.add("POST", vmss + r"/delete", delete_instances)
    router.add(
        "POST",
        vmss + r"/virtualMachines/(?P<iid>[^/]+)/retrieveBootDiagnosticsData",
        boot_diagnostics,
    )
    router.add(
        "GET",
        _SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)",
        get_operation,
    )
    return router
