"""How the emulator stores and shows network resources: virtual networks, NSGs, public IPs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from azmanagers.emulator.scalesets import ArmState
from azmanagers.emulator.server import ArmError
from azmanagers.emulator.shapes import id_parts, new_uuid

NETWORK = "Microsoft.Network"
VNETS = "microsoft.network/virtualnetworks"
NSGS = "microsoft.network/networksecuritygroups"
PUBLIC_IPS = "microsoft.network/publicipaddresses"
_DEFAULT_RULES = (
    # name, description, source, destination, access, priority, direction (Azure's six)
    ("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET", "VirtualNetwork",
     "VirtualNetwork", "Allow", 65000, "Inbound"),
    ("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer",
     "AzureLoadBalancer", "*", "Allow", 65001, "Inbound"),
    ("DenyAllInBound", "Deny all inbound traffic", "*", "*", "Deny", 65500, "Inbound"),
    ("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET",
     "VirtualNetwork", "VirtualNetwork", "Allow", 65000, "Outbound"),
    ("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet", "*",
     "Internet", "Allow", 65001, "Outbound"),
    ("DenyAllOutBound", "Deny all outbound traffic", "*", "*", "Deny", 65500, "Outbound"),
)  # fmt: skip


RESOURCE_MEMBERS = frozenset({
    "id", "name", "type", "location", "extendedlocation", "tags", "plan", "properties", "kind",
    "managedby", "sku", "identity", "zones", "etag", "scale", "systemdata",
})  # fmt: skip
"""What ARM reads at the top of a PUT body (its ResourceDefinition): the rest is in properties."""
SUBNET_MEMBERS = frozenset({"id", "name", "type", "etag", "properties"})


def check_members(
    body: dict[str, Any],
    type_name: str = "ResourceDefinition",
    members: frozenset[str] = RESOURCE_MEMBERS,
) -> None:
    """Refuse a body with a member ARM does not know, as ARM does (names ignore case).

    Since azure-mgmt-network 31 and azure-mgmt-compute 38 the SDKs send a plain dict as it is,
    so a dict with the SDK's snake_case names (``ip_configurations``) reaches ARM unchanged:
    Azure answers this 400, and so does the emulator.
    """
    for key in body:
        if key.lower() not in members:
            position = json.dumps(body).find(f'"{key}"') + len(key) + 2
            raise ArmError(
                400,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized: 'Could not find "
                f"member '{key}' on object of type '{type_name}'. Path '{key}', line 1, position "
                f"{position}.'.",
            )


def same_id(left: Any, right: Any) -> bool:
    """Whether two ARM ids name the same resource (ids ignore case)."""
    return str(left or "").strip("/").lower() == str(right or "").strip("/").lower()


def key_of(resource_id: str, kind: str) -> tuple[str, str, str, str]:
    parts = id_parts(resource_id)
    name = parts.get(kind.rsplit("/", 1)[-1], "")
    sub, rg = parts.get("subscriptions", ""), parts.get("resourcegroups", "")
    return (sub.lower(), rg.lower(), kind, name.lower())


def _ip_configs(state: ArmState) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Every NIC's ip configurations: (NIC, configuration id, configuration properties)."""
    for nic in state.nics.values():
        for config in (nic.get("properties") or {}).get("ipConfigurations") or []:
            config_id = config.get("id") or f"{nic['id']}/ipConfigurations/{config.get('name')}"
            yield nic, str(config_id), config.get("properties") or {}


def uses_of(state: ArmState, field: str, resource_id: str) -> list[str]:
    """The ip configurations whose ``field`` (subnet, publicIPAddress) is ``resource_id``."""
    return [
        config_id
        for _, config_id, props in _ip_configs(state)
        if same_id((props.get(field) or {}).get("id"), resource_id)
    ]


@dataclass(frozen=True)
class Kind:
    """A top-level network resource type and how the emulator stores and shows it."""

    segment: str
    """The type's path segment (``virtualNetworks``)."""
    fill: Callable[[ArmState, dict[str, Any], dict[str, Any] | None], None]
    """Add what Azure fills in to a new body (given the stored one, if any)."""
    view: Callable[[ArmState, dict[str, Any]], dict[str, Any]]
    """The stored body with its back-references (who uses it), as a GET returns it."""
    in_use: Callable[[ArmState, dict[str, Any]], None]
    """Raise Azure's error when the resource may not be deleted."""

    @property
    def type(self) -> str:
        return f"{NETWORK}/{self.segment}"


# -- virtual networks and subnets -----------------------------------------------------------
def fill_subnet(vnet_id: str, subnet: dict[str, Any], etag: str) -> dict[str, Any]:
    name = str(subnet.get("name") or "")
    if not name:
        raise ArmError(400, "InvalidRequestFormat", "Each subnet needs a name.")
    props = subnet.setdefault("properties", {})
    if not props.get("addressPrefix") and not props.get("addressPrefixes"):
        raise ArmError(400, "InvalidRequestFormat", f"Subnet {name} needs an addressPrefix.")
    subnet.update(
        id=f"{vnet_id}/subnets/{name}",
        etag=etag,
        type=f"{NETWORK}/virtualNetworks/subnets",
    )
    props["provisioningState"] = "Succeeded"
    props.setdefault("delegations", [])
    props.setdefault("privateEndpointNetworkPolicies", "Disabled")
    props.setdefault("privateLinkServiceNetworkPolicies", "Enabled")
    return subnet


def _fill_vnet(state: ArmState, body: dict[str, Any], stored: dict[str, Any] | None) -> None:
    props = body.setdefault("properties", {})
    etag = body["etag"]
    props["subnets"] = [fill_subnet(body["id"], s, etag) for s in props.get("subnets") or []]
    kept = {s["name"].lower() for s in props["subnets"]}
    for subnet in (stored or {}).get("properties", {}).get("subnets") or []:
        if subnet["name"].lower() not in kept:  # a PUT without a subnet deletes it
            subnet_not_in_use(state, subnet)
    props.setdefault("addressSpace", {"addressPrefixes": []})
    props.setdefault("virtualNetworkPeerings", [])
    props.setdefault("enableDdosProtection", False)
    props["resourceGuid"] = (stored or {}).get("properties", {}).get("resourceGuid") or new_uuid()


def subnet_view(state: ArmState, subnet: dict[str, Any]) -> dict[str, Any]:
    shown = copy.deepcopy(subnet)
    uses = uses_of(state, "subnet", subnet["id"])
    if uses:
        shown["properties"]["ipConfigurations"] = [{"id": use} for use in uses]
    return shown


def _vnet_view(state: ArmState, body: dict[str, Any]) -> dict[str, Any]:
    shown = copy.deepcopy(body)
    props = shown["properties"]
    props["subnets"] = [subnet_view(state, s) for s in props["subnets"]]
    return shown


def subnet_not_in_use(state: ArmState, subnet: dict[str, Any]) -> None:
    uses = uses_of(state, "subnet", subnet["id"])
    if uses:
        raise ArmError(
            400,
            "InUseSubnetCannotBeDeleted",
            f"Subnet {subnet['name']} is in use by {uses[0]} and cannot be deleted. In order to "
            "delete the subnet, delete all the resources within the subnet.",
        )


def _vnet_not_in_use(state: ArmState, body: dict[str, Any]) -> None:
    for subnet in body["properties"]["subnets"]:
        subnet_not_in_use(state, subnet)


# -- network security groups ----------------------------------------------------------------
def _rule(nsg_id: str, kind: str, name: str, props: dict[str, Any], etag: str) -> dict[str, Any]:
    return {
        "name": name,
        "id": f"{nsg_id}/{kind}/{name}",
        "etag": etag,
        "type": f"{NETWORK}/networkSecurityGroups/{kind}",
        "properties": {**props, "provisioningState": "Succeeded"},
    }


def _check_rules(rules: list[dict[str, Any]]) -> None:
    seen: dict[tuple[int, str], str] = {}
    for rule in rules:
        props = rule.get("properties") or {}
        name, priority = str(rule.get("name") or ""), props.get("priority")
        if not name:
            raise ArmError(400, "InvalidRequestFormat", "Each security rule needs a name.")
        if not isinstance(priority, int) or not 100 <= priority <= 4096:
            raise ArmError(
                400,
                "SecurityRuleInvalidPriority",
                f"Security rule {name} has invalid Priority. Value provided: {priority}. "
                "Allowed range 100-4096.",
            )
        for field in ("protocol", "access", "direction"):
            if not props.get(field):
                raise ArmError(
                    400, "InvalidRequestFormat", f"Security rule {name} needs a {field}."
                )
        slot = (priority, str(props["direction"]).lower())
        if slot in seen:
            raise ArmError(
                400,
                "SecurityRuleConflict",
                f"Security rule {name} conflicts with rule {seen[slot]}. Rules cannot have the "
                "same Priority and Direction.",
            )
        seen[slot] = name


def _fill_nsg(state: ArmState, body: dict[str, Any], stored: dict[str, Any] | None) -> None:
    del state
    props = body.setdefault("properties", {})
    rules = props.get("securityRules") or []
    _check_rules(rules)
    etag, nsg_id = body["etag"], body["id"]
    props["securityRules"] = [
        _rule(nsg_id, "securityRules", r["name"], r.get("properties") or {}, etag) for r in rules
    ]
    props["defaultSecurityRules"] = [
        _rule(
            nsg_id,
            "defaultSecurityRules",
            name,
            {
                "description": description,
                "protocol": "*",
                "sourcePortRange": "*",
                "destinationPortRange": "*",
                "sourceAddressPrefix": source,
                "destinationAddressPrefix": destination,
                "access": access,
                "priority": priority,
                "direction": direction,
            },
            etag,
        )
        for name, description, source, destination, access, priority, direction in _DEFAULT_RULES
    ]
    props.setdefault("flushConnection", False)
    props["resourceGuid"] = (stored or {}).get("properties", {}).get("resourceGuid") or new_uuid()


def _nsg_users(state: ArmState, nsg_id: str) -> tuple[list[str], list[str]]:
    """The NICs and the subnets that use a security group."""
    nics = [
        str(nic["id"])
        for nic in state.nics.values()
        if same_id(
            ((nic.get("properties") or {}).get("networkSecurityGroup") or {}).get("id"), nsg_id
        )
    ]
    subnets = [
        str(subnet["id"])
        for (_, _, kind, _), vnet in state.others.items()
        if kind == VNETS
        for subnet in vnet["properties"]["subnets"]
        if same_id((subnet["properties"].get("networkSecurityGroup") or {}).get("id"), nsg_id)
    ]
    return nics, subnets


def _nsg_view(state: ArmState, body: dict[str, Any]) -> dict[str, Any]:
    shown = copy.deepcopy(body)
    nics, subnets = _nsg_users(state, body["id"])
    if nics:
        shown["properties"]["networkInterfaces"] = [{"id": nic} for nic in nics]
    if subnets:
        shown["properties"]["subnets"] = [{"id": subnet} for subnet in subnets]
    return shown


def _nsg_not_in_use(state: ArmState, body: dict[str, Any]) -> None:
    nics, subnets = _nsg_users(state, body["id"])
    if nics or subnets:
        raise ArmError(
            400,
            "InUseNetworkSecurityGroupCannotBeDeleted",
            f"Network security group {body['id']} cannot be deleted because it is in use by the "
            f"following resources: {', '.join(nics + subnets)}.",
        )


# -- public IP addresses --------------------------------------------------------------------
def _fill_public_ip(state: ArmState, body: dict[str, Any], stored: dict[str, Any] | None) -> None:
    props = body.setdefault("properties", {})
    sku = body.setdefault("sku", {"name": "Basic"})
    sku.setdefault("tier", "Regional")
    method = str(props.get("publicIPAllocationMethod") or "Dynamic").capitalize()
    version = str(props.get("publicIPAddressVersion") or "IPv4").lower()
    if version != "ipv4":
        raise ArmError(400, "InvalidRequestFormat", "The emulator serves IPv4 public IPs only.")
    props.update(publicIPAllocationMethod=method, publicIPAddressVersion="IPv4")
    props.setdefault("idleTimeoutInMinutes", 4)
    props.setdefault("ipTags", [])
    kept = (stored or {}).get("properties", {})
    props["resourceGuid"] = kept.get("resourceGuid") or new_uuid()
    props.pop("ipAddress", None)
    if kept.get("ipAddress"):
        props["ipAddress"] = kept["ipAddress"]
    elif method == "Static":
        # Azure's address is public; here it is one the emulated VM behind it listens on
        props["ipAddress"] = state.addresses.next()


def _public_ip_view(state: ArmState, body: dict[str, Any]) -> dict[str, Any]:
    shown = copy.deepcopy(body)
    uses = uses_of(state, "publicIPAddress", body["id"])
    if uses:
        shown["properties"]["ipConfiguration"] = {"id": uses[0]}
    return shown


def _public_ip_not_in_use(state: ArmState, body: dict[str, Any]) -> None:
    uses = uses_of(state, "publicIPAddress", body["id"])
    if uses:
        raise ArmError(
            400,
            "PublicIPAddressInUse",
            f"Public IP address {body['id']} can not be deleted since it is still allocated to "
            f"resource {uses[0]}. In order to delete the public IP, disassociate/detach the "
            "Public IP address from the resource.",
        )


KINDS = (
    Kind("virtualNetworks", _fill_vnet, _vnet_view, _vnet_not_in_use),
    Kind("networkSecurityGroups", _fill_nsg, _nsg_view, _nsg_not_in_use),
    Kind("publicIPAddresses", _fill_public_ip, _public_ip_view, _public_ip_not_in_use),
)
