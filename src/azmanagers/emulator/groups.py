"""Resource groups (create, show, list, delete; HEAD is GET to the server) and resource lists."""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

from azmanagers.emulator.removal import remove_group
from azmanagers.emulator.scaleset_views import vm_view, vmss_view
from azmanagers.emulator.scalesets import ArmState, Operation
from azmanagers.emulator.server import (
    GROUP_PATH,
    SUBSCRIPTION_PATH,
    ArmError,
    Request,
    Response,
    Router,
)
from azmanagers.emulator.validation import (
    check_location,
    check_tags,
    count_parameter,
    location_name,
    same_location,
    unreadable,
    without_nulls,
)

_SUB = SUBSCRIPTION_PATH
_RG = GROUP_PATH
_TERM = re.compile(
    r"\s*(?:(?P<field>\w+)\s+eq\s+'(?P<value>[^']*)'"
    r"|startswith\(\s*(?P<sfield>\w+)\s*,\s*'(?P<prefix>[^']*)'\s*\))\s*(?:and\s+|$)",
    re.IGNORECASE,
)
RESOURCE_FIELDS = ("tagname", "tagvalue", "name", "location", "resourcetype", "resourcegroup")
"""What ``$filter`` on a resource list may test (ARM's OData subset; ``startswith`` too)."""
GROUP_FIELDS = ("tagname", "tagvalue")


def parse_filter(text: str, fields: tuple[str, ...]) -> list[tuple[str, str, bool]]:
    """ARM's ``$filter``: terms ``field eq 'value'`` or ``startswith(field, 'prefix')`` joined by
    ``and``; return (lower-case field, value, is_prefix) triples."""
    terms: list[tuple[str, str, bool]] = []
    position, text = 0, text.strip()
    while position < len(text):
        match = _TERM.match(text, position)
        if match is None or match.end() == position:
            raise ArmError(400, "InvalidFilterInQueryString", f"Unsupported $filter: {text!r}.")
        field = (match["field"] or match["sfield"]).lower()
        if field not in fields:
            raise ArmError(
                400,
                "InvalidFilterInQueryString",
                f"Unsupported $filter field {field!r}: use {', '.join(fields)}.",
            )
        prefix = match["field"] is None
        terms.append((field, match["prefix"] if prefix else match["value"], prefix))
        position = match.end()
    if any(f == "tagvalue" for f, _, _ in terms) and not any(f == "tagname" for f, _, _ in terms):
        raise ArmError(400, "InvalidFilterInQueryString", "tagValue needs a tagName.")
    return terms


def matches(entry: dict[str, Any], group: str, terms: list[tuple[str, str, bool]]) -> bool:
    """Whether a listed resource (or group) passes every filter term (names ignore case, tag
    values do not, as in ARM)."""
    tags = entry.get("tags") or {}
    names = {str(k).lower(): str(k) for k in tags}
    tag = next((names.get(v.lower()) for f, v, p in terms if f == "tagname" and not p), None)
    for field, value, prefix in terms:
        if field == "tagname":
            if prefix and not any(k.startswith(value.lower()) for k in names):
                return False
            if not prefix and tag is None:
                return False
            continue
        if field == "tagvalue":
            actual = str(tags.get(tag, "")) if tag is not None else None
            if actual is None or not (actual.startswith(value) if prefix else actual == value):
                return False
            continue
        actual = {
            "name": str(entry.get("name", "")),
            "location": str(entry.get("location", "")),
            "resourcetype": str(entry.get("type", "")),
            "resourcegroup": group,
        }[field].lower()
        if not (actual.startswith(value.lower()) if prefix else actual == value.lower()):
            return False
    return True


def _summary(body: dict[str, Any], expand: str) -> dict[str, Any]:
    """A resource as the generic list shows it."""
    entry: dict[str, Any] = {
        k: copy.deepcopy(body[k]) for k in ("id", "name", "type", "location") if k in body
    }
    entry["tags"] = copy.deepcopy(body.get("tags") or {})
    for key in ("sku", "kind", "identity", "managedBy", "plan", "zones"):
        if body.get(key) is not None:
            entry[key] = copy.deepcopy(body[key])
    if "provisioningstate" in expand.lower():
        entry["provisioningState"] = "Succeeded"
    return entry


def resources(state: ArmState, sub: str, rg: str | None) -> list[tuple[str, dict[str, Any]]]:
    """Every resource of a subscription (or one of its groups) with its group's name, as
    stored (lock held): scale sets, their Flexible VMs, VMs, NICs and the others."""
    sub = sub.lower()
    wanted = rg.lower() if rg is not None else None
    found: list[tuple[str, dict[str, Any]]] = []

    def mine(key: tuple[str, ...]) -> bool:
        return key[0] == sub and (wanted is None or key[1] == wanted)

    for key, scaleset in state.scalesets.items():
        if mine(key):
            found.append((scaleset.rg, vmss_view(scaleset)))
            if scaleset.flexible:
                found += [
                    (scaleset.rg, vm_view(state, scaleset, vm, False))
                    for vm in scaleset.vms.values()
                ]
    found += [(v["body"]["id"].split("/")[4], v["body"]) for k, v in state.vms.items() if mine(k)]
    found += [(n["id"].split("/")[4], n) for k, n in state.nics.items() if mine(k)]
    found += [(o["id"].split("/")[4], o) for k, o in state.others.items() if mine(k)]
    return sorted(found, key=lambda item: str(item[1].get("id", "")).lower())


def _top(req: Request, value: list[Any]) -> list[Any]:
    text = req.query.get("$top", "")
    if not text:
        return value
    return value[: count_parameter(text, "$top")]


def add_group_routes(router: Router, state: ArmState) -> None:
    """Add resource-group, subscription-list and group-deletion routes over ``state``."""

    def put_group(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match["rg"]
        if not isinstance(req.body, dict):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        body = without_nulls(req.body)
        location = check_location(body)
        tags = check_tags(body.get("tags", {}))
        if not isinstance(body.get("managedBy", ""), str):
            raise unreadable("managedBy", "a string", body["managedBy"])
        with state.lock:
            existing = state.groups.get((sub.lower(), rg.lower()))
            if existing is not None and not same_location(existing["location"], location):
                raise ArmError(
                    409,
                    "InvalidResourceGroupLocation",
                    f"Invalid resource group location '{location}'. The Resource group already "
                    f"exists in location '{existing['location']}'.",
                )
            group = {
                "id": f"/subscriptions/{sub}/resourceGroups/{existing['name'] if existing else rg}",
                "name": existing["name"] if existing else rg,
                "type": "Microsoft.Resources/resourceGroups",
                "location": existing["location"] if existing else location_name(location),
                "tags": copy.deepcopy(tags),
                "properties": {"provisioningState": "Succeeded"},
            }
            if body.get("managedBy"):
                group["managedBy"] = body["managedBy"]
            state.groups[(sub.lower(), rg.lower())] = group
        return Response(200 if existing else 201, group)

    def get_group(req: Request) -> Response:
        with state.lock:
            return Response(200, state.group(req.match["sub"], req.match["rg"]))

    def delete_group(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match["rg"]
        with state.lock:
            if remove_group(state, sub, rg) is None:
                state.group(sub, rg)  # raises ResourceGroupNotFound
            op = Operation(id=str(uuid.uuid4()))
            state.operations[op.id] = op
        # ARM answers with a Location to poll (202 while deleting, 200 when done)
        url = (
            f"{req.base_url}/subscriptions/{sub}/operationresults/{op.id}"
            f"?api-version={req.query['api-version']}"
        )
        return Response(202, None, {"Location": url, "Retry-After": "0"})

    def operation_result(req: Request) -> Response:
        with state.lock:
            op = state.operations.get(req.match["op"])
        if op is None:
            raise ArmError(404, "NotFound", f"Operation {req.match['op']} not found.")
        return Response(200 if op.status == "Succeeded" else 202)

    def list_groups(req: Request) -> Response:
        sub = req.match["sub"].lower()
        terms = parse_filter(req.query.get("$filter", ""), GROUP_FIELDS)
        with state.lock:
            value = [
                copy.deepcopy(group)
                for (g_sub, _), group in sorted(state.groups.items())
                if g_sub == sub and matches(group, group["name"], terms)
            ]
        return Response(200, {"value": _top(req, value)})

    def list_resources(req: Request) -> Response:
        sub, rg = req.match["sub"], req.match.groupdict().get("rg")
        terms = parse_filter(req.query.get("$filter", ""), RESOURCE_FIELDS)
        expand = req.query.get("$expand", "")
        with state.lock:
            if rg is not None:
                state.group(sub, rg)
            value = [
                _summary(body, expand)
                for group, body in resources(state, sub, rg)
                if matches(body, group, terms)
            ]
        if {"tagname", "tagvalue"} <= {field for field, _, _ in terms}:
            for entry in value:  # ARM: filtered by tag name and value, tags are not returned
                entry.pop("tags", None)
        return Response(200, {"value": _top(req, value)})

    router.add("GET", _SUB + r"/resourcegroups", list_groups)
    router.add("GET", _SUB + r"/resources", list_resources)
    router.add("GET", _RG + r"/resources", list_resources)
    router.add("GET", _SUB + r"/operationresults/(?P<op>[^/]+)", operation_result)
    router.add("PUT", _RG, put_group)
    router.add("GET", _RG, get_group)
    router.add("DELETE", _RG, delete_group)
