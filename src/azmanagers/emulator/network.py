"""Network resources: virtual networks and their subnets, security groups, public IPs."""

from __future__ import annotations

import copy
from typing import Any

from azmanagers.emulator.network_kinds import (
    KINDS,
    NSGS,
    PUBLIC_IPS,
    SUBNET_MEMBERS,
    VNETS,
    Kind,
    check_members,
    fill_subnet,
    key_of,
    same_id,
    subnet_not_in_use,
    subnet_view,
    uses_of,
)
from azmanagers.emulator.removal import release_addresses
from azmanagers.emulator.scalesets import ArmState
from azmanagers.emulator.server import (
    GROUP_PATH,
    SUBSCRIPTION_PATH,
    ArmError,
    Request,
    Response,
    Router,
)
from azmanagers.emulator.shapes import network_etag

_SUB = SUBSCRIPTION_PATH
_RG = GROUP_PATH


def link_nic(state: ArmState, nic: dict[str, Any]) -> None:
    """Check what a NIC being stored references (lock held) and give it its public IP's address.

    A subnet is checked only when its virtual network exists here: templates may name a network
    the emulator was never told of. A referenced security group or public IP must exist; a
    public IP serves one ip configuration. An emulated VM has one (loopback) address, so a NIC
    with a public IP takes that IP's address as its private one (reachable either way).
    """
    props = nic.get("properties") or {}
    nsg_id = (props.get("networkSecurityGroup") or {}).get("id")
    if nsg_id and key_of(str(nsg_id), NSGS) not in state.others:
        _missing(str(nsg_id), nic)
    for config in props.get("ipConfigurations") or []:
        settings = config.setdefault("properties", {})
        subnet_id = str((settings.get("subnet") or {}).get("id") or "")
        vnet = state.others.get(key_of(subnet_id, VNETS)) if subnet_id else None
        if vnet is not None and not any(
            same_id(s["id"], subnet_id) for s in vnet["properties"]["subnets"]
        ):
            _missing(subnet_id, nic)
        ip_id = str((settings.get("publicIPAddress") or {}).get("id") or "")
        if not ip_id:
            continue
        public_ip = state.others.get(key_of(ip_id, PUBLIC_IPS))
        if public_ip is None:
            _missing(ip_id, nic)
            continue
        others = [
            use
            for use in uses_of(state, "publicIPAddress", ip_id)
            if not use.lower().startswith(str(nic["id"]).lower() + "/")
        ]
        if others:
            raise ArmError(
                400,
                "PublicIPAddressInUse",
                f"Resource {ip_id} is in use by {others[0]} and cannot be referenced again.",
            )
        ip_props = public_ip["properties"]
        if not ip_props.get("ipAddress"):  # a Dynamic one gets its address when attached
            ip_props["ipAddress"] = state.addresses.next()
        settings["privateIPAddress"] = ip_props["ipAddress"]


def _missing(resource_id: str, nic: dict[str, Any]) -> None:
    raise ArmError(
        400,
        "InvalidResourceReference",
        f"Resource {resource_id} referenced by resource {nic.get('id')} was not found. Please "
        "make sure that the referenced resource exists, and that both resources are in the same "
        "region.",
    )


def add_network_routes(router: Router, state: ArmState) -> None:
    """Add the routes of virtual networks (and subnets), security groups and public IPs."""
    for kind in KINDS:
        _add_kind(router, state, kind)
    _add_subnets(router, state)


def _rid(req: Request, kind: Kind) -> str:
    return (
        f"/subscriptions/{req.match['sub']}/resourceGroups/{req.match['rg']}/providers/"
        f"{kind.type}/{req.match['name']}"
    )


def _key(req: Request, kind: Kind) -> tuple[str, str, str, str]:
    return (
        req.match["sub"].lower(),
        req.match["rg"].lower(),
        kind.type.lower(),
        req.match["name"].lower(),
    )


def _not_found(kind: Kind, req: Request) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{kind.type}/{req.match['name']}' under resource group "
        f"'{req.match['rg']}' was not found.",
    )


def _add_kind(router: Router, state: ArmState, kind: Kind) -> None:
    base = _RG + rf"/providers/Microsoft\.Network/{kind.segment}"
    one = base + r"/(?P<name>[^/]+)"

    def put(req: Request) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        check_members(body)
        if not body.get("location"):
            raise ArmError(400, "LocationRequired", "The location property is required.")
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            stored = state.others.get(_key(req, kind))
            resource = copy.deepcopy(body)
            resource.update(
                id=_rid(req, kind), name=req.match["name"], type=kind.type, etag=network_etag()
            )
            resource.setdefault("tags", {})
            kind.fill(state, resource, stored)
            resource["properties"]["provisioningState"] = "Succeeded"
            state.others[_key(req, kind)] = resource
            headers = state.operation(req, req.match["sub"], body["location"])
            shown = kind.view(state, resource)
        return Response(200 if stored else 201, shown, headers)

    def get(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            stored = state.others.get(_key(req, kind))
            if stored is None:
                raise _not_found(kind, req)
            return Response(200, kind.view(state, stored))

    def delete(req: Request) -> Response:
        with state.lock:
            state.group(req.match["sub"], req.match["rg"])
            stored = state.others.get(_key(req, kind))
            if stored is None:
                return Response(204)
            kind.in_use(state, stored)
            del state.others[_key(req, kind)]
            release_addresses(state, stored)
            headers = state.operation(req, req.match["sub"], stored["location"])
        return Response(202, None, headers)

    def listing(req: Request) -> Response:
        sub, rg = req.match["sub"].lower(), (req.match.groupdict().get("rg") or "").lower()
        with state.lock:
            if rg:
                state.group(req.match["sub"], req.match["rg"])
            value = [
                kind.view(state, body)
                for (s, r, t, _), body in sorted(state.others.items())
                if t == kind.type.lower() and s == sub and (not rg or r == rg)
            ]
        return Response(200, {"value": value})

    router.add("GET", base, listing)
    router.add("GET", _SUB + rf"/providers/Microsoft\.Network/{kind.segment}", listing)
    router.add("PUT", one, put)
    router.add("GET", one, get)
    router.add("DELETE", one, delete)


def _add_subnets(router: Router, state: ArmState) -> None:
    vnet_kind = KINDS[0]
    base = _RG + r"/providers/Microsoft\.Network/virtualNetworks/(?P<name>[^/]+)/subnets"
    one = base + r"/(?P<subnet>[^/]+)"

    def vnet_of(req: Request) -> dict[str, Any]:
        state.group(req.match["sub"], req.match["rg"])
        vnet = state.others.get(_key(req, vnet_kind))
        if vnet is None:
            raise _not_found(vnet_kind, req)
        return vnet

    def find(vnet: dict[str, Any], req: Request) -> dict[str, Any] | None:
        wanted = req.match["subnet"].lower()
        return next((s for s in vnet["properties"]["subnets"] if s["name"].lower() == wanted), None)

    def listing(req: Request) -> Response:
        with state.lock:
            vnet = vnet_of(req)
            return Response(
                200, {"value": [subnet_view(state, s) for s in vnet["properties"]["subnets"]]}
            )

    def get(req: Request) -> Response:
        with state.lock:
            subnet = find(vnet_of(req), req)
            if subnet is None:
                raise ArmError(404, "NotFound", f"Resource {req.path} not found.")
            return Response(200, subnet_view(state, subnet))

    def put(req: Request) -> Response:
        body = req.body if isinstance(req.body, dict) else {}
        check_members(body, "Subnet", SUBNET_MEMBERS)
        with state.lock:
            vnet = vnet_of(req)
            existing = find(vnet, req)
            etag = network_etag()
            subnet = fill_subnet(
                vnet["id"],
                {
                    "name": req.match["subnet"],
                    "properties": copy.deepcopy(body.get("properties") or {}),
                },
                etag,
            )
            subnets = vnet["properties"]["subnets"]
            if existing is not None:
                subnets[subnets.index(existing)] = subnet
            else:
                subnets.append(subnet)
            vnet["etag"] = etag
            headers = state.operation(req, req.match["sub"], vnet["location"])
            return Response(200 if existing else 201, subnet_view(state, subnet), headers)

    def delete(req: Request) -> Response:
        with state.lock:
            vnet = vnet_of(req)
            subnet = find(vnet, req)
            if subnet is None:
                return Response(204)
            subnet_not_in_use(state, subnet)
            vnet["properties"]["subnets"].remove(subnet)
            vnet["etag"] = network_etag()
            headers = state.operation(req, req.match["sub"], vnet["location"])
        return Response(202, None, headers)

    router.add("GET", base, listing)
    router.add("PUT", one, put)
    router.add("GET", one, get)
    router.add("DELETE", one, delete)
