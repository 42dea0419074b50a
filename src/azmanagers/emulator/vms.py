"""The emulator's stand-alone VMs and their network interfaces."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from azmanagers.emulator import flexible
from azmanagers.emulator.arm import boot_log_links
from azmanagers.emulator.instances import VMIdentity, is_market_image
from azmanagers.emulator.network import link_nic
from azmanagers.emulator.removal import DISKS, key_of, release_addresses, remove_vm
from azmanagers.emulator.scaleset_views import vm_view
from azmanagers.emulator.scalesets import ArmState, ScaleSet, ScaleSetVM, remove_instance
from azmanagers.emulator.server import (
    GROUP_PATH,
    SUBSCRIPTION_PATH,
    ArmError,
    Request,
    Response,
    Router,
)
from azmanagers.emulator.shapes import (
    attach_nic,
    fill_nic,
    fill_storage_profile,
    new_uuid,
    os_disk_name,
    os_disk_record,
    public_os_profile,
)
from azmanagers.emulator.tokens import managed_identity_ids
from azmanagers.emulator.validation import check_custom_data
from azmanagers.emulator.views import iso, statuses

_SUB = SUBSCRIPTION_PATH
_RG = GROUP_PATH
_NIC = _RG + r"/providers/Microsoft\.Network/networkInterfaces/(?P<name>[^/]+)"
_VMS = _RG + r"/providers/Microsoft\.Compute/virtualMachines"
_ALL_VMS = _SUB + r"/providers/Microsoft\.Compute/virtualMachines"
_VM = _VMS + r"/(?P<name>[^/]+)"


def _key(req: Request) -> tuple[str, str, str]:
    return (req.match["sub"].lower(), req.match["rg"].lower(), req.match["name"].lower())


def _rid(req: Request, kind: str) -> str:
    return (
        f"/subscriptions/{req.match['sub']}/resourceGroups/{req.match['rg']}/providers/{kind}/"
        f"{req.match['name']}"
    )


def _stopping(state: ArmState, vm_id: str) -> Callable[[], bool] | None:
    """What keeps a VM's delete InProgress: its processes still stopping (as on Azure, a VM
    whose delete has succeeded no longer answers)."""
    runner = state.runner
    if runner is None or not vm_id:
        return None
    return lambda: runner.stopping(vm_id)


def add_vm_routes(router: Router, state: ArmState) -> None:
    """Add networkInterfaces and virtualMachines routes over ``state``."""

    def put_nic(req: Request) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        if not configs:
            raise ArmError(400, "InvalidRequestFormat", "ipConfigurations are required.")
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            old = state.nics.get(_key(req))
            nic = copy.deepcopy(body)
            # a re-PUT names the NIC in any casing: it keeps the name (and id) it was made with
            nic.update(
                id=old["id"] if old else _rid(req, "Microsoft.Network/networkInterfaces"),
                name=old["name"] if old else req.match["name"],
                type="Microsoft.Network/networkInterfaces",
            )
            kept = (old or {}).get("properties") or {}
            for field in ("resourceGuid", "macAddress", "virtualMachine", "primary"):
                if field in kept:
                    nic["properties"][field] = kept[field]
            # VMs that run as processes here get loopback addresses of their own, so that
            # their services (the detached one on its fixed port) are reachable and apart;
            # a dynamic address stays the NIC's while it exists
            # (one it took from a public IP is the public IP's, not the NIC's, to keep)
            was = (kept.get("ipConfigurations") or [{}])[0].get("properties") or {}
            own = old is not None and not was.get("publicIPAddress")
            address = str(was["privateIPAddress"]) if own else state.addresses.next()
            fill_nic(nic, address)
            try:
                link_nic(state, nic)  # its subnet, NSG and public IP (network.py)
            except ArmError:
                if not own:
                    state.addresses.give_back(address)
                raise
            taken = nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
            if taken != address:  # it listens on its public IP's address instead
                state.addresses.give_back(address)
            existed = old is not None
            state.nics[_key(req)] = nic
            headers = state.operation(req, req.match["sub"], body["location"])
        return Response(200 if existed else 201, nic, headers)

    def get_nic(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            nic = state.nics.get(_key(req))
        if nic is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Network/networkInterfaces/{req.match['name']}' under "
                f"resource group '{req.match['rg']}' was not found.",
            )
        return Response(200, nic)

    def delete_nic(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            if any(_uses_nic(vm["body"], _key(req)) for vm in state.vms.values()):
                raise ArmError(
                    400, "NicInUse", f"Network interface {req.match['name']} is used by a VM."
                )
            nic = state.nics.pop(_key(req), None)
            if nic is not None:
                release_addresses(state, nic)
        if nic is None:
            return Response(204)
        return Response(202, None, state.operation(req, req.match["sub"], nic["location"]))

    def put_vm(req: Request) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        props = body.get("properties") or {}
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nics:
            raise ArmError(400, "InvalidParameter", "networkProfile.networkInterfaces is required.")
        sub, rg = req.match["sub"], req.match["rg"]
        script = check_custom_data((props.get("osProfile") or {}).get("customData"))
        with state.lock:
            state.group(sub, rg)
            for ref in nics:
                if key_of(str(ref.get("id", ""))) not in state.nics:
                    raise ArmError(
                        400,
                        "InvalidResourceReference",
                        f"Resource {ref.get('id')} referenced by the VM was not found.",
                    )
            old = state.vms.get(_key(req))
            existed = old is not None
            view = _stored_vm(req, body, old, state.tenant_id)
            created_at = float(old["created_at"]) if old is not None else time.time()
            state.vms[_key(req)] = {"body": view, "created_at": created_at}
            for ref in nics:
                attach_nic(state.nics[key_of(str(ref["id"]))], view["id"])
            if not existed:
                _add_os_disk(state, view, created_at)
            if not existed and state.runner is not None:
                nic = state.nics[key_of(str(nics[0]["id"]))]
                configs = nic["properties"]["ipConfigurations"]
                state.runner.start(
                    VMIdentity(
                        name=str(view["name"]),
                        vm_id=str(view["properties"]["vmId"]),
                        subscription=sub,
                        resource_group=rg,
                        scaleset="",
                        location=str(body["location"]),
                        stock_image=is_market_image(props),
                        address=str(configs[0]["properties"]["privateIPAddress"]),
                        managed_identity="systemassigned"
                        in str((body.get("identity") or {}).get("type", "")).lower(),
                    ),
                    script or "#!/bin/bash\n",
                )
            headers = state.operation(req, sub, body["location"])
        return Response(200 if existed else 201, _public_vm(view), headers)

    def get_vm(req: Request) -> Response:
        expand = req.query.get("$expand", "").lower()
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            vm = state.vms.get(_key(req))
            if vm is None:
                scaleset, member = _flexible_vm(state, req)
                return Response(200, vm_view(state, scaleset, member, expand == "instanceview"))
        # user data is given back on asking only ($expand=userData), as Azure does
        view = _public_vm(vm["body"], with_user_data=expand == "userdata")
        if expand == "instanceview":
            view["properties"]["instanceView"] = _instance_view(vm)
        return Response(200, view)

    def get_instance_view(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            vm = state.vms.get(_key(req))
            if vm is None:
                scaleset, member = _flexible_vm(state, req)
                view = vm_view(state, scaleset, member, True)["properties"]["instanceView"]
                return Response(200, {"computerName": member.name, **view})
        computer = vm["body"]["properties"]["osProfile"]["computerName"]
        return Response(200, {"computerName": computer, **_instance_view(vm)})

    def _instance_view(vm: dict[str, Any]) -> dict[str, Any]:
        runner = state.runner
        vm_id = str(vm["body"]["properties"]["vmId"])
        power = "running" if runner is None else runner.power_state(vm_id)
        return {"statuses": statuses("succeeded", power, float(vm.get("created_at", time.time())))}

    def list_vms(req: Request) -> Response:
        sub, rg = req.match["sub"].lower(), (req.match.groupdict().get("rg") or "").lower()
        expand = req.query.get("$expand", "").lower() == "instanceview"
        text = req.query.get("$filter", "")
        if expand and not text:
            raise ArmError(
                400,
                "InvalidParameter",
                "$expand=instanceView needs a $filter on virtualMachineScaleSet/id.",
            )
        with state.lock:
            if rg:
                state.group(req.match["sub"], req.match["rg"])
            if text:
                wanted = flexible.parse_filter(text).lower()
                members = [
                    (scaleset, vm)
                    for scaleset in _flexible_sets(state, sub, rg)
                    if scaleset.id.lower() == wanted
                    for vm in scaleset.vms.values()
                ]
                value = [vm_view(state, ss, vm, expand) for ss, vm in members]
            else:
                value = [
                    _public_vm(v["body"])
                    for (s, r, _), v in sorted(state.vms.items())
                    if s == sub and (not rg or r == rg)
                ]
                for scaleset in _flexible_sets(state, sub, rg):
                    value += [vm_view(state, scaleset, vm, False) for vm in scaleset.vms.values()]
        return Response(200, {"value": value})

    def boot_diagnostics(req: Request) -> Response:
        # the serial log's address names the VM by its vmId (the runner's key for it)
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            vm = state.vms.get(_key(req))
            if vm is not None:
                vm_id = str(vm["body"]["properties"]["vmId"])
            else:
                vm_id = _flexible_vm(state, req)[1].vm_id  # raises 404 for a VM that is neither
        return boot_log_links(state, req, vm_id)

    def delete_vm(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            vm = remove_vm(state, _key(req))
            if vm is None:
                try:
                    scaleset, member = _flexible_vm(state, req)
                except ArmError:
                    return Response(204)
                # deleting a Flexible scale set's VM lowers its capacity by one
                remove_instance(state, scaleset, member.instance_id)
                scaleset.body["sku"]["capacity"] = len(scaleset.vms)
                scaleset.generation += 1
                location = scaleset.body["location"]
                busy = _stopping(state, member.vm_id)
                return Response(202, None, state.operation(req, req.match["sub"], location, busy))
            busy = _stopping(state, str(vm["body"]["properties"].get("vmId", "")))
            headers = state.operation(req, req.match["sub"], vm["body"]["location"], busy)
        return Response(202, None, headers)

    router.add("PUT", _NIC, put_nic)
    router.add("GET", _NIC, get_nic)
    router.add("DELETE", _NIC, delete_nic)
    router.add("GET", _VMS, list_vms)
    router.add("GET", _ALL_VMS, list_vms)
    router.add("PUT", _VM, put_vm)
    router.add("GET", _VM, get_vm)
    router.add("GET", _VM + r"/instanceView", get_instance_view)
    router.add("DELETE", _VM, delete_vm)
    router.add("POST", _VM + r"/retrieveBootDiagnosticsData", boot_diagnostics)


def _flexible_sets(state: ArmState, sub: str, rg: str) -> list[ScaleSet]:
    """The Flexible scale sets of a resource group (lower-case ``sub`` and ``rg``; every group
    of the subscription when ``rg`` is empty)."""
    return [
        scaleset
        for (s_sub, s_rg, _), scaleset in sorted(state.scalesets.items())
        if s_sub == sub and (not rg or s_rg == rg) and scaleset.flexible
    ]


def _stored_vm(
    req: Request, body: dict[str, Any], old: dict[str, Any] | None, tenant_id: str | None
) -> dict[str, Any]:
    """A VM as stored: the request's body with what Azure adds (ids, vmId, OS disk's name,
    type and managed-disk id, empty lists); what Azure made at creation stays, its name (in
    the casing it was made with) too."""
    stored = (old or {}).get("body") or {}
    view = copy.deepcopy(body)
    view.update(
        id=stored.get("id") or _rid(req, "Microsoft.Compute/virtualMachines"),
        name=stored.get("name") or req.match["name"],
        type="Microsoft.Compute/virtualMachines",
    )
    name = str(view["name"])
    props = view.setdefault("properties", {})
    before = stored.get("properties") or {}
    props["provisioningState"] = "Succeeded"
    props["vmId"] = before.get("vmId") or new_uuid()
    props["timeCreated"] = before.get("timeCreated") or iso(time.time())
    storage = props.setdefault("storageProfile", {})
    disk_name = (
        (storage.get("osDisk") or {}).get("name")
        or ((before.get("storageProfile") or {}).get("osDisk") or {}).get("name")
        or os_disk_name(name)
    )
    disk_id = _rid(req, "Microsoft.Compute/disks").rsplit("/", 1)[0] + f"/{disk_name}"
    fill_storage_profile(storage, disk_name, disk_id)
    os_profile = props.setdefault("osProfile", {})
    os_profile.setdefault("computerName", name)
    os_profile.setdefault("secrets", [])
    identity = view.get("identity")
    if isinstance(identity, dict) and "systemassigned" in str(identity.get("type", "")).lower():
        # the identity's service principal, the one its IMDS tokens name (``oid``)
        identity["principalId"] = managed_identity_ids(props["vmId"])[0]
        if tenant_id:
            identity["tenantId"] = tenant_id
    return view


def _add_os_disk(state: ArmState, vm: dict[str, Any], created_at: float) -> None:
    """Make the managed disk a new VM's OS disk is (unless it is an unmanaged VHD)."""
    storage = vm["properties"]["storageProfile"]
    disk_id = str((storage["osDisk"].get("managedDisk") or {}).get("id", ""))
    if disk_id:
        sub, rg, name = key_of(disk_id)
        image = storage.get("imageReference") or {}
        state.others.setdefault(
            (sub, rg, DISKS, name), os_disk_record(disk_id, vm, image, created_at)
        )


def _public_vm(body: dict[str, Any], *, with_user_data: bool = False) -> dict[str, Any]:
    """A stored VM as ARM returns it: without its password and custom data, and with its user
    data only when asked for (``$expand=userData``)."""
    view = copy.deepcopy(body)
    props = view.get("properties") or {}
    if isinstance(props.get("osProfile"), dict):
        props["osProfile"] = public_os_profile(props["osProfile"])
    if not with_user_data:
        props.pop("userData", None)
    return view


def _flexible_vm(state: ArmState, req: Request) -> tuple[ScaleSet, ScaleSetVM]:
    """The Flexible scale-set VM the request names, or a 404."""
    sub, rg, name = _key(req)
    for scaleset in _flexible_sets(state, sub, rg):
        for vm in scaleset.vms.values():
            if vm.name.lower() == name:
                return scaleset, vm
    raise ArmError(404, "ResourceNotFound", f"VM {req.match['name']} was not found.")


def _uses_nic(vm_body: dict[str, Any], nic: tuple[str, str, str]) -> bool:
    """Tell whether a VM uses the NIC of lower-case key ``nic`` (subscription, group, name)."""
    nics = (vm_body.get("properties", {}).get("networkProfile") or {}).get("networkInterfaces", [])
    return any(key_of(str(n.get("id", ""))) == nic for n in nics)
