"""Managed disks (``Microsoft.Compute/disks``): a VM's OS disk, and empty disks made by PUT."""

from __future__ import annotations

import copy
import time
from typing import Any

from azmanagers.emulator.network_kinds import check_members
from azmanagers.emulator.removal import DISKS
from azmanagers.emulator.scalesets import ArmState
from azmanagers.emulator.server import (
    GROUP_PATH,
    SUBSCRIPTION_PATH,
    ArmError,
    Request,
    Response,
    Router,
)
from azmanagers.emulator.shapes import new_uuid
from azmanagers.emulator.views import iso

_SUB = SUBSCRIPTION_PATH
_RG = GROUP_PATH
_DISKS = r"/providers/Microsoft\.Compute/disks"
MAX_DISK_GB = 32767


def _key(req: Request) -> tuple[str, str, str, str]:
    return (req.match["sub"].lower(), req.match["rg"].lower(), DISKS, req.match["name"].lower())


def _not_found(req: Request) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.Compute/disks/{req.match['name']}' under resource group "
        f"'{req.match['rg']}' was not found.",
    )


def _empty_disk(req: Request, body: dict[str, Any]) -> dict[str, Any]:
    """A new empty disk from a PUT body (the one creation option served besides a VM's)."""
    props = body.get("properties") or {}
    option = str((props.get("creationData") or {}).get("createOption") or "")
    if option.lower() != "empty":
        raise ArmError(
            400,
            "InvalidParameter",
            f"createOption {option or '(none)'} is not served: the emulator makes Empty disks "
            "(a VM's OS disk comes with the VM).",
        )
    size = props.get("diskSizeGB")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_DISK_GB:
        raise ArmError(
            400, "InvalidParameter", f"diskSizeGB must be 1 to {MAX_DISK_GB}, got {size!r}."
        )
    disk_id = (
        f"/subscriptions/{req.match['sub']}/resourceGroups/{req.match['rg']}/providers/"
        f"Microsoft.Compute/disks/{req.match['name']}"
    )
    return {
        "id": disk_id,
        "name": req.match["name"],
        "type": "Microsoft.Compute/disks",
        "location": body["location"],
        "tags": copy.deepcopy(body.get("tags") or {}),
        "managedBy": None,
        "sku": copy.deepcopy(body.get("sku") or {"name": "Standard_LRS", "tier": "Standard"}),
        "properties": {
            "creationData": {"createOption": "Empty"},
            "diskSizeGB": size,
            "diskState": "Unattached",
            "provisioningState": "Succeeded",
            "timeCreated": iso(time.time()),
            "uniqueId": new_uuid(),
        },
    }


def add_disk_routes(router: Router, state: ArmState) -> None:
    """Add the managed-disk routes: list (group and subscription), get, put (empty), delete.

    A VM made by ``PUT virtualMachines`` gets its OS disk here (see ``vms``); the disk stays
    after the VM unless its ``osDisk.deleteOption`` is ``Delete``, as on Azure, so a client
    deletes it. A disk attached to a VM (``managedBy``) cannot be deleted.
    """

    def listing(req: Request) -> Response:
        sub, rg = req.match["sub"].lower(), (req.match.groupdict().get("rg") or "").lower()
        with state.lock:
            if rg:
                state.group(req.match["sub"], req.match["rg"])
            value = [
                copy.deepcopy(body)
                for (s, r, kind, _), body in sorted(state.others.items())
                if kind == DISKS and s == sub and (not rg or r == rg)
            ]
        return Response(200, {"value": value})

    def get(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            disk = state.others.get(_key(req))
            if disk is None:
                raise _not_found(req)
            return Response(200, copy.deepcopy(disk))

    def put(req: Request) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        check_members(body)
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            existing = state.others.get(_key(req))
            if existing is not None:
                existing["tags"] = copy.deepcopy(body.get("tags") or existing.get("tags") or {})
                disk = existing
            else:
                disk = state.others[_key(req)] = _empty_disk(req, body)
            headers = state.operation(req, req.match["sub"], disk["location"])
            return Response(200 if existing else 202, copy.deepcopy(disk), headers)

    def delete(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            disk = state.others.get(_key(req))
            if disk is None:
                return Response(204)
            if disk.get("managedBy"):
                raise ArmError(
                    409,
                    "OperationNotAllowed",
                    f"Disk {disk['name']} is attached to VM {disk['managedBy']}.",
                )
            del state.others[_key(req)]
            headers = state.operation(req, req.match["sub"], disk["location"])
        return Response(202, None, headers)

    one = _RG + _DISKS + r"/(?P<name>[^/]+)"
    router.add("GET", _RG + _DISKS, listing)
    router.add("GET", _SUB + _DISKS, listing)
    router.add("GET", one, get)
    router.add("PUT", one, put)
    router.add("DELETE", one, delete)
