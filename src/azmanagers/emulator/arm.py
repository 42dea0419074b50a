"""The ARM part of the emulator: resource groups, scale sets and their VMs, operations."""

from __future__ import annotations

import hmac
import re
import secrets
import time

from azmanagers.emulator.catalog import (
    LOCATIONS,
    SKUS,
    SKUS_BY_NAME,
    sku_document,
    usage_document,
)
from azmanagers.emulator.groups import add_group_routes
from azmanagers.emulator.scaleset_updates import patch_scaleset, put_scaleset
from azmanagers.emulator.scaleset_views import host_name, vm_view, vmss_view
from azmanagers.emulator.scalesets import ArmState, ScaleSet, remove_instance
from azmanagers.emulator.server import (
    GROUP_PATH,
    SUBSCRIPTION_PATH,
    ArmError,
    Request,
    Response,
    Router,
)
from azmanagers.emulator.validation import check_instance_ids, count_parameter
from azmanagers.emulator.views import iso, provisioning_status, summary

_SUB = SUBSCRIPTION_PATH
_RG = GROUP_PATH
_VMSS = _RG + r"/providers/Microsoft\.Compute/virtualMachineScaleSets"
_ANY_VMSS = _SUB + r"(?:/resourceGroups/(?P<rg>[^/]+))?/providers/Microsoft\.Compute"
_ANY_VMSS += r"/virtualMachineScaleSets"


def _uniform_only(scaleset: ScaleSet, what: str) -> None:
    if scaleset.flexible:
        raise ArmError(
            400,
            "OperationNotAllowed",
            f"{what} is not supported for scale set {scaleset.name} in orchestrationMode "
            "Flexible: use the virtualMachines API (list it with $filter="
            "'virtualMachineScaleSet/id' eq '<scale set id>').",
        )


BOOT_LOG_MAX_BYTES = 1 << 20
_SECRETS = re.compile(
    r"((?:^|&)(?:sig|client_secret|access_token|password|code|assertion)=)[^&]*", re.IGNORECASE
)
"""Query values the call log never shows: SAS signatures, secrets and tokens."""
"""A blob URL's signature (a credential, like a SAS): kept out of the call log's answers."""


def _blob_signature(state: ArmState, name: str) -> str:
    return hmac.new(state.blob_key, name.encode(), "sha256").hexdigest()


def _location_filter(text: str) -> str | None:
    match = re.match(r"^\s*location eq '(?P<loc>[^']*)'\s*$", text, re.IGNORECASE)
    return match["loc"] if match else None


def boot_log_links(state: ArmState, req: Request, vm_name: str) -> Response:
    """The answer to retrieveBootDiagnosticsData: a signed (SAS-style) serial log URL."""
    url = f"{req.base_url}/azmanagers-blob/serial/{vm_name}?sig={_blob_signature(state, vm_name)}"
    return Response(200, {"consoleScreenshotBlobUri": None, "serialConsoleLogBlobUri": url})


def build_admin_router(state: ArmState) -> Router:
    """Return the emulator's own routes: faults, evictions, the call log, boot-log blobs."""
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

    def get_calls(req: Request) -> Response:
        if state.call_log is None:
            raise ArmError(
                404,
                "NotFound",
                "This emulator's server does not share its call log with ARM's state.",
            )
        since = count_parameter(req.query.get("since", "0"), "since")
        first, calls = state.call_log(since)
        value = [
            {
                "index": index,
                "method": call.method,
                "path": call.path,
                "query": _SECRETS.sub(r"\1<redacted>", call.query),
                "status": call.status,
                "user_agent": call.user_agent,
            }
            for index, call in enumerate(calls, start=first)
        ]
        # "first": the oldest index still held (the log keeps the newest calls only)
        return Response(200, {"value": value, "first": first, "next": first + len(calls)})

    router.add("GET", r"/azmanagers-admin/calls", get_calls)
    router.add("GET", r"/azmanagers-blob/serial/(?P<vm>[^/]+)", serial_log)
    router.add("POST", r"/azmanagers-admin/evict", evict)
    router.add("GET", r"/azmanagers-admin/faults", get_faults)
    router.add("POST", r"/azmanagers-admin/faults", set_faults)
    return router


def build_router(state: ArmState) -> Router:
    """Return the ARM routes over ``state``."""
    router = Router()

    def put_vmss(req: Request) -> Response:
        sub, rg, name = req.match["sub"], req.match["rg"], req.match["name"]
        with state.lock:
            scaleset, existed = put_scaleset(state, sub, rg, name, req.body)
            headers = state.operation(req, sub, str(scaleset.body["location"]))
            view = vmss_view(scaleset, "Updating" if existed else "Creating")
        return Response(200 if existed else 201, view, headers)

    def patch_vmss(req: Request) -> Response:
        sub, rg, name = req.match["sub"], req.match["rg"], req.match["name"]
        with state.lock:
            scaleset = state.scaleset(sub, rg, name)
            patch_scaleset(state, scaleset, req.body)
            headers = state.operation(req, sub, scaleset.body["location"])
            return Response(200, vmss_view(scaleset, "Updating"), headers)

    def get_vmss(req: Request) -> Response:
        with state.lock:
            return Response(
                200,
                vmss_view(state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])),
            )

    def list_vmss(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match.groupdict().get("rg")
        with state.lock:
            if rg is not None:
                state.group(sub, rg)
            value = [
                vmss_view(s)
                for (s_sub, s_rg, _), s in sorted(state.scalesets.items())
                if s_sub == sub.lower() and (rg is None or s_rg == rg.lower())
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
                remove_instance(state, scaleset, iid)
            return Response(202, None, state.operation(req, sub, scaleset.body["location"]))

    def list_vms(req: Request) -> Response:
        expand = req.query.get("$expand", "").lower() == "instanceview"
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            _uniform_only(scaleset, "Listing scale-set VMs")
            value = [vm_view(state, scaleset, vm, expand) for _, vm in sorted(scaleset.vms.items())]
        return Response(200, {"value": value})

    def delete_instances(req: Request) -> Response:
        ids = check_instance_ids(req.body)
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            unknown = [i for i in ids if i not in scaleset.vms]
            if unknown:
                raise ArmError(
                    404, "NotFound", f"Instances {', '.join(unknown)} are not in scale set."
                )
            for iid in ids:
                remove_instance(state, scaleset, iid)
            scaleset.body["sku"]["capacity"] = len(scaleset.vms)
            scaleset.generation += 1
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
        return boot_log_links(state, req, vm.vm_id)  # the runner knows a VM by its vmId

    def get_operation(req: Request) -> Response:
        with state.lock:
            op = state.operations.get(req.match["op"])
        if op is None:
            raise ArmError(404, "NotFound", f"Operation {req.match['op']} not found.")
        status = op.current_status()
        again = {"retry-after-ms": "200"} if status == "InProgress" else {}
        if req.match["kind"].lower() == "operationresults" or req.query.get("monitor") == "true":
            # a Location to poll: its GET is the operation's result (none here) once done
            return Response(200 if status == "Succeeded" else 202, None, again)
        moment = iso(op.started)
        if status == "InProgress":
            return Response(200, {"name": op.id, "status": status, "startTime": moment}, again)
        return Response(
            200, {"name": op.id, "status": status, "startTime": moment, "endTime": moment}
        )

    def list_skus(req: Request) -> Response:
        # one entry per size and location, as ARM lists them; a filter keeps one location
        wanted = _location_filter(req.query.get("$filter", ""))
        places = [p for p in LOCATIONS if wanted is None or p.lower() == wanted.lower()]
        return Response(200, {"value": [sku_document(s, p) for p in places for s in SKUS]})

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

    def scaleset_instance_view(req: Request) -> Response:
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            members = [vm_view(state, scaleset, vm, True) for vm in scaleset.vms.values()]
            created = min((vm.created_at for vm in scaleset.vms.values()), default=time.time())
        codes = [
            status["code"]
            for member in members
            for status in member["properties"]["instanceView"]["statuses"]
        ]
        return Response(
            200,
            {
                "virtualMachine": {"statusesSummary": summary(codes)},
                "statuses": [provisioning_status("succeeded", created)],
            },
        )

    def member_view(req: Request) -> Response:
        with state.lock:
            scaleset = state.scaleset(req.match["sub"], req.match["rg"], req.match["name"])
            vm = scaleset.vms.get(req.match["iid"])
            if vm is None:
                raise ArmError(
                    404,
                    "NotFound",
                    f"The instance {req.match['iid']} of {scaleset.name} was not found.",
                )
            view = vm_view(state, scaleset, vm, True)["properties"]["instanceView"]
        return Response(200, {"computerName": host_name(scaleset, vm), **view})

    router.add("GET", _SUB + r"/providers/Microsoft\.Compute/skus", list_skus)
    router.add(
        "GET", _SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/usages", list_usages
    )
    add_group_routes(router, state)
    router.add("GET", _ANY_VMSS, list_vmss)
    vmss = _VMSS + r"/(?P<name>[^/]+)"
    router.add("PUT", vmss, put_vmss)
    router.add("PATCH", vmss, patch_vmss)
    router.add("GET", vmss, get_vmss)
    router.add("DELETE", vmss, delete_vmss)
    router.add("GET", vmss + r"/virtualMachines", list_vms)
    router.add("GET", vmss + r"/instanceView", scaleset_instance_view)
    router.add("GET", vmss + r"/virtualMachines/(?P<iid>[^/]+)/instanceView", member_view)
    router.add("POST", vmss + r"/delete", delete_instances)
    router.add(
        "POST",
        vmss + r"/virtualMachines/(?P<iid>[^/]+)/retrieveBootDiagnosticsData",
        boot_diagnostics,
    )
    router.add(
        "GET",
        _SUB + r"/providers/Microsoft\.(?:Compute|Network)/locations/(?P<loc>[^/]+)"
        r"/(?P<kind>operations|operationResults)/(?P<op>[^/]+)",
        get_operation,
    )
    return router
