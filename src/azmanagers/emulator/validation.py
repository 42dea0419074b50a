"""Shape checks on request bodies, made before anything is stored: ARM's 400s, never a 500."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from azmanagers.emulator.server import ArmError

MAX_TAGS = 50
MAX_CUSTOM_DATA_CHARS = 87_380
"""Azure's limit: 65,535 bytes, base64-encoded."""
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
"""Azure's tag limits on a resource or resource group."""
MAX_INT64 = 2**63 - 1
"""The largest ``long`` (what ``sku.capacity`` is): past it ARM cannot read the body."""
SINGLE_PLACEMENT_GROUP_LIMIT = 100
SCALESET_LIMIT = 1000
"""VMs in a scale set: at most 100 in one placement group (a Uniform scale set's default), 1,000
with ``singlePlacementGroup: false`` (and always in Flexible mode)."""
_COUNT = re.compile(r"[0-9]{1,9}")

_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def without_nulls(value: Any) -> Any:
    """``value`` with every null-valued object member dropped: for Azure's compute provider a
    null in a body means "not given" (the stored value is kept)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def count_parameter(text: str, name: str) -> int:
    """A query count (``$top``, ``since``): ASCII digits only, at most 9 of them."""
    if not _COUNT.fullmatch(text):
        raise ArmError(
            400, "InvalidParameter", f"{name} must be a non-negative number, got {text[:40]!r}."
        )
    return int(text)


def unreadable(path: str, expected: str, value: Any) -> ArmError:
    """ARM's answer to a body it cannot deserialize into the resource's model."""
    got = "null" if value is None else type(value).__name__
    return ArmError(
        400,
        "InvalidRequestContent",
        "The request content was invalid and could not be deserialized: "
        f"'{path}' must be {expected}, got {got}.",
    )


def _typed(value: Any, kind: type, path: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise unreadable(path, _KINDS[kind], value)
    return value


def _member(parent: dict[str, Any], key: str, kind: type, path: str) -> Any:
    """``parent[key]`` checked to be of ``kind`` when present; None when absent."""
    if key not in parent:
        return None
    return _typed(parent[key], kind, f"{path}.{key}" if path else key)


def check_tags(value: Any, path: str = "tags") -> dict[str, str]:
    """Tags as Azure takes them: an object of strings, at most 50, names up to 512
    characters, values up to 256."""
    tags: dict[str, str] = _typed(value, dict, path)
    for name, value in tags.items():
        if not isinstance(value, str):
            raise unreadable(f"{path}.{name}", "a string", value)
    if len(tags) > MAX_TAGS:
        raise ArmError(
            400,
            "InvalidParameter",
            f"The resource has {len(tags)} tags: at most {MAX_TAGS} are allowed.",
        )
    for name, value in tags.items():
        if not name or len(name) > MAX_TAG_NAME:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The tag name '{name[:64]}' must be 1 to {MAX_TAG_NAME} characters long.",
            )
        if len(value) > MAX_TAG_VALUE:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The value of tag '{name[:64]}' is longer than {MAX_TAG_VALUE} characters.",
            )
    return tags


def check_location(body: dict[str, Any]) -> str:
    """The body's ``location``: required, a non-empty string."""
    location = body.get("location")
    if location is None or location == "":
        raise ArmError(400, "LocationRequired", "The location property is required.")
    return str(_typed(location, str, "location"))


def location_name(location: str) -> str:
    """A location as ARM stores it: ``East US`` is ``eastus``."""
    return location.replace(" ", "").lower()


def same_location(a: str, b: str) -> bool:
    """ARM's location comparison: ``East US`` is ``eastus``."""
    return location_name(a) == location_name(b)


def _check_sku(sku: dict[str, Any]) -> None:
    _member(sku, "name", str, "sku")
    _member(sku, "tier", str, "sku")
    if "capacity" in sku:
        capacity = sku["capacity"]
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity > MAX_INT64:
            raise unreadable("sku.capacity", "an integer (a long)", capacity)
        if capacity < 0:
            raise ArmError(
                400,
                "InvalidParameter",
                f"The value {capacity} of parameter 'sku.capacity' must be 0 or more.",
            )


def _check_os_profile(os_profile: dict[str, Any], path: str) -> None:
    for key in ("computerNamePrefix", "adminUsername", "adminPassword", "customData"):
        _member(os_profile, key, str, path)
    for key in ("linuxConfiguration", "windowsConfiguration"):
        _member(os_profile, key, dict, path)
    _member(os_profile, "secrets", list, path)
    check_custom_data(os_profile.get("customData"))


def check_custom_data(encoded: Any) -> str:
    """Return custom data as the text a VM runs; refuse what Azure refuses (not base64, over
    65,535 bytes) and what the emulator cannot run (not UTF-8: gzip'd custom data)."""
    if not encoded:
        return ""
    if not isinstance(encoded, str):
        raise unreadable("osProfile.customData", "a string", encoded)
    if len(encoded) > MAX_CUSTOM_DATA_CHARS:
        raise ArmError(
            400,
            "InvalidParameter",
            f"Custom data in OSProfile must be in Base64 encoding and with a maximum length of "
            f"{MAX_CUSTOM_DATA_CHARS} characters.",
        )
    try:
        raw = base64.b64decode(encoded.replace("\n", "").replace("\r", ""), validate=True)
    except (binascii.Error, ValueError):
        raise ArmError(
            400, "InvalidParameter", "Custom data in OSProfile must be in Base64 encoding."
        ) from None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ArmError(
            400,
            "InvalidParameter",
            "The emulator runs custom data that is text (a script or #cloud-config); this is "
            "binary (gzip'd?): send it uncompressed.",
        ) from None


def _check_storage_profile(storage: dict[str, Any], path: str) -> None:
    _member(storage, "imageReference", dict, path)
    os_disk = _member(storage, "osDisk", dict, path)
    if os_disk is not None:
        _member(os_disk, "managedDisk", dict, f"{path}.osDisk")
        _member(os_disk, "name", str, f"{path}.osDisk")
    disks = _member(storage, "dataDisks", list, path) or []
    for index, disk in enumerate(disks):
        _typed(disk, dict, f"{path}.dataDisks[{index}]")


def _check_named_list(parent: dict[str, Any], key: str, path: str) -> list[dict[str, Any]]:
    """A list of objects, each with a string ``name`` and (if given) object ``properties``."""
    entries = _member(parent, key, list, path) or []
    for index, entry in enumerate(entries):
        where = f"{path}.{key}[{index}]"
        _typed(entry, dict, where)
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ArmError(400, "InvalidParameter", f"{where}.name is required.")
        _member(entry, "properties", dict, where)
    return list(entries)


def _check_network_profile(network: dict[str, Any], path: str) -> None:
    for config in _check_named_list(network, "networkInterfaceConfigurations", path):
        where = f"{path}.networkInterfaceConfigurations[{config['name']}].properties"
        settings = config.get("properties")
        if not isinstance(settings, dict) or not isinstance(settings.get("ipConfigurations"), list):
            raise ArmError(400, "InvalidParameter", f"{where}.ipConfigurations is required.")
        _check_named_list(settings, "ipConfigurations", where)


def _check_vm_profile(profile: dict[str, Any]) -> None:
    path = "properties.virtualMachineProfile"
    os_profile = _member(profile, "osProfile", dict, path)
    if os_profile is not None:
        _check_os_profile(os_profile, f"{path}.osProfile")
    storage = _member(profile, "storageProfile", dict, path)
    if storage is not None:
        _check_storage_profile(storage, f"{path}.storageProfile")
    network = _member(profile, "networkProfile", dict, path)
    if network is not None:
        _check_network_profile(network, f"{path}.networkProfile")
    for key in ("priority", "evictionPolicy"):
        _member(profile, key, str, path)
    _member(profile, "billingProfile", dict, path)


def check_scaleset(model: dict[str, Any]) -> None:
    """Raise ARM's 400 unless ``model`` (a scale set as it would be stored) has the shapes
    the emulator and Azure's model need."""
    sku = _member(model, "sku", dict, "")
    if sku is not None:
        _check_sku(sku)
    if "tags" in model:
        check_tags(model["tags"])
    _member(model, "zones", list, "")
    props = _member(model, "properties", dict, "")
    if props is None:
        return
    _member(props, "orchestrationMode", str, "properties")
    _member(props, "singlePlacementGroup", bool, "properties")
    _member(props, "upgradePolicy", dict, "properties")
    _member(props, "priorityMixPolicy", dict, "properties")
    profile = _member(props, "virtualMachineProfile", dict, "properties")
    if profile is not None:
        _check_vm_profile(profile)


def capacity_limit(model: dict[str, Any], flexible: bool) -> int:
    """How many VMs the scale set may hold: 100 in a single placement group (a Uniform scale
    set's default), else 1,000."""
    single = (model.get("properties") or {}).get("singlePlacementGroup")
    if flexible or single is False:
        return SCALESET_LIMIT
    return SINGLE_PLACEMENT_GROUP_LIMIT


def check_capacity(name: str, capacity: int, limit: int) -> None:
    """Azure's answer to a scale set asked to hold more VMs than it may."""
    if capacity > limit:
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Unable to create or update Virtual Machine Scale Set '{name}' as it exceeds the "
            f"total limit of '{limit}' Virtual Machine instances."
            + (
                " Set properties.singlePlacementGroup to false for up to "
                f"{SCALESET_LIMIT} instances."
                if limit == SINGLE_PLACEMENT_GROUP_LIMIT
                else ""
            ),
        )


def check_instance_ids(body: Any) -> list[str]:
    """The ``instanceIds`` of a delete-instances body: distinct strings."""
    ids = body.get("instanceIds") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArmError(400, "InvalidParameter", "instanceIds must be a list of strings.")
    if len(set(ids)) != len(ids):
        raise ArmError(400, "InvalidParameter", "InstanceIds may not be repeated.")
    return ids


def check_envelope(body: Any) -> None:
    """Refuse a PUT or PATCH body whose ARM envelope is not Azure's shape: an object, with a
    string location, an object of properties and of sku, and tags as Azure takes them."""
    if body is None:
        return
    if not isinstance(body, dict):
        raise unreadable("the body", "an object", body)
    if body.get("location") is not None and not isinstance(body["location"], str):
        raise unreadable("location", "a string", body["location"])
    for key in ("properties", "sku"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise unreadable(key, "an object", body[key])
    if body.get("tags") is not None:
        check_tags(body["tags"])
