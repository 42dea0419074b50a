"""The shapes of scale-set, VM and NIC templates, and their validation."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from azmanagers.config.manifest import RESOURCE_GROUP_RE
from azmanagers.errors import ConfigError

TemplateKind = Literal["scaleset", "vm", "nic"]
KINDS: tuple[TemplateKind, ...] = ("scaleset", "vm", "nic")
TEMPLATE_FILENAMES: Mapping[str, str] = MappingProxyType(
    {
        "scaleset": "templates_scaleset.json",
        "vm": "templates_vm.json",
        "nic": "templates_nic.json",
    }
)

PROVIDER_LOCAL = "local"
PROVIDER_AZURE = "azure"
PROVIDERS = (PROVIDER_LOCAL, PROVIDER_AZURE)
BUILTIN_TEMPLATE_NAME = "local"

LOCAL_TEMPLATE_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "provider": PROVIDER_LOCAL,
        "max_instances": 16,
        "nthreads": 1,
        "memory_limit": "auto",
        "join_timeout_s": 120.0,
        "max_replacements": 3,
        "death_timeout_s": 30.0,
    }
)
"""The built-in scale-set template ``local``; a local template's keys are exactly these."""

LOCAL_VM_TEMPLATE_DEFAULTS: Mapping[str, Any] = MappingProxyType({"provider": PROVIDER_LOCAL})
"""The built-in VM template ``local``; a local VM template's keys are exactly these."""

MAX_LOCAL_INSTANCES = 256
DEFAULT_SCALESET_CAPACITY = 2
DEFAULT_OSDISK_SIZE_GB = 60
DEFAULT_DATADISK_SIZE_GB = 1023
DEFAULT_DATADISK_STORAGE = "Premium_LRS"
DEFAULT_OSDISK_STORAGE = "Standard_LRS"
ULTRA_SSD_STORAGE = "UltraSSD_LRS"
FIRST_DATADISK_LUN = 1
MAX_DATADISK_LUN = 63
DEFAULT_TEMPDISK = "sudo mkdir -m 777 /mnt/scratch\nln -s /mnt/scratch /scratch"
DEFAULT_NIC_NAME = "cbox-nic"
UPGRADE_MODES = ("Manual", "Automatic", "Rolling")

# Every pattern below is used with ``fullmatch`` (``match`` with ``$`` would accept "name\n").
NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
GUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_SEG = r"[^/\s]+"
SUBNET_ID_RE = re.compile(
    rf"/subscriptions/{_SEG}/resourceGroups/{_SEG}/providers/Microsoft\.Network"
    rf"/virtualNetworks/{_SEG}/subnets/{_SEG}",
    re.IGNORECASE,
)
IMAGE_ID_RE = re.compile(
    rf"/subscriptions/{_SEG}/resourceGroups/{_SEG}/providers/Microsoft\.Compute"
    rf"/(?:galleries/{_SEG}/images/{_SEG}(?:/versions/{_SEG})?|images/{_SEG})",
    re.IGNORECASE,
)
NIC_ID_RE = re.compile(
    rf"/subscriptions/{_SEG}/resourceGroups/{_SEG}/providers/Microsoft\.Network"
    rf"/networkInterfaces/{_SEG}",
    re.IGNORECASE,
)
MEMORY_RE = re.compile(
    r"\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|pb|kib|mib|gib|tib|pib|k|m|g|t|p)?\s*",
    re.IGNORECASE,
)

# How long a template name may be, from what it becomes (Azure's naming rules, Linux VMs).
AZURE_NAME_MAX_CHARS = 64
"""Azure's longest scale-set name, VM name and Linux computer name."""
POOL_SUFFIX_CHARS = 7
"""A cluster names its pool (the scale set) ``<template>-<6 hex digits>`` (cluster/core.py)."""
FLEXIBLE_VM_SUFFIX_CHARS = 9
"""A Flexible scale set names its VMs ``<scale set>_<8 hex digits>``."""
UNIFORM_COMPUTER_SUFFIX_CHARS = 6
"""A Uniform scale set names its instances' hosts ``<computerNamePrefix><6 base-36 chars>``."""
COMPUTER_NAME_PREFIX_MAX_CHARS = AZURE_NAME_MAX_CHARS - UNIFORM_COMPUTER_SUFFIX_CHARS
"""The longest ``computerNamePrefix`` of a Linux scale set (58)."""
MAX_TEMPLATE_NAME_CHARS: Mapping[str, int] = MappingProxyType(
    {
        # the longest name a Flexible scale set's VM gets: <template>-<6 hex>_<8 hex>
        "scaleset": AZURE_NAME_MAX_CHARS - POOL_SUFFIX_CHARS - FLEXIBLE_VM_SUFFIX_CHARS,
        # build_vmtemplate makes the name the VM's computer name
        "vm": AZURE_NAME_MAX_CHARS,
        "nic": AZURE_NAME_MAX_CHARS,
    }
)
"""The longest template name of each kind (a scale-set template's: 48 characters)."""

SUBNET_ID_FORMAT = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network"
    "/virtualNetworks/{vnet}/subnets/{subnet}"
)
IMAGE_ID_FORMAT = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute"
    "/galleries/{gallery}/images/{image}"
)
NIC_ID_FORMAT = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{nic}"
)

_HOW_TO_CREATE: Mapping[str, str] = MappingProxyType(
    {
        "scaleset": (
            "Create one with azmanagers.build_sstemplate(...) and "
            "azmanagers.save_template_scaleset(name, template), or "
            "`azm template add-scaleset NAME ...` (add --local for a local one)."
        ),
        "vm": (
            "Create one with azmanagers.build_vmtemplate(...) and "
            "azmanagers.save_template_vm(name, template), or `azm template add-vm NAME ...`."
        ),
        "nic": (
            "Create one with azmanagers.build_nictemplate(...) and "
            "azmanagers.save_template_nic(name, template), or `azm template add-nic NAME ...`."
        ),
    }
)

_MISSING: Any = object()


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


class _Check:
    """Where a template came from, so that every error names the source, template and key."""

    def __init__(self, source: str, name: str) -> None:
        self.source = source
        self.name = name

    def fail(self, path: str, problem: str, fix: str) -> NoReturn:
        """Raise a ConfigError naming the source, the template, the key path and the fix."""
        where = f"{self.source}, template {self.name!r}"
        if path:
            where += f", key {path}"
        end = "" if fix.endswith((".", ")")) else "."
        raise ConfigError(f"{where}: {problem}. {fix}{end}")

    def get(self, parent: Mapping[str, Any], key: str, path: str, *, fix: str) -> Any:
        """Return ``parent[key]``, failing when it is missing."""
        if key not in parent:
            self.fail(_join(path, key), "is missing", fix)
        return parent[key]

    def mapping(
        self, parent: Mapping[str, Any], key: str, path: str, *, required: bool = True
    ) -> Mapping[str, Any] | None:
        """Return the JSON object at ``parent[key]`` (None if optional and absent)."""
        here = _join(path, key)
        if key not in parent:
            if required:
                self.fail(here, "is missing", "Add it as a JSON object (see build_* for the shape)")
            return None
        value = parent[key]
        if not isinstance(value, Mapping):
            self.fail(here, f"must be a JSON object, got {_show(value)}", "Make it an object")
        return value

    def string(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        *,
        fix: str,
        required: bool = True,
        allow_empty: bool = False,
    ) -> str | None:
        """Return the string at ``parent[key]``; empty strings fail unless ``allow_empty``."""
        here = _join(path, key)
        if key not in parent:
            if required:
                self.fail(here, "is missing", fix)
            return None
        value = parent[key]
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            kind = "a string" if allow_empty else "a non-empty string"
            self.fail(here, f"must be {kind}, got {_show(value)}", fix)
        return value

    def boolean(self, parent: Mapping[str, Any], key: str, path: str) -> None:
        """Check that ``parent[key]``, if present, is true or false."""
        if key in parent and not isinstance(parent[key], bool):
            self.fail(
                _join(path, key),
                f"must be true or false, got {_show(parent[key])}",
                "Set it to true or false",
            )

    def integer(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        *,
        minimum: int,
        maximum: int | None = None,
        required: bool = False,
        fix: str,
    ) -> None:
        """Check that ``parent[key]`` is an integer in ``[minimum, maximum]``."""
        here = _join(path, key)
        if key not in parent:
            if required:
                self.fail(here, "is missing", fix)
            return
        value = parent[key]
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if ok and maximum is not None:
            ok = value <= maximum
        if not ok:
            if maximum is not None:
                want = f"an integer from {minimum} to {maximum}"
            elif minimum == 0:
                want = "a non-negative integer"
            elif minimum == 1:
                want = "a positive integer"
            else:
                want = f"an integer >= {minimum}"
            self.fail(here, f"must be {want}, got {_show(value)}", fix)

    def array(
        self, parent: Mapping[str, Any], key: str, path: str, *, required: bool, nonempty: bool
    ) -> list[Any]:
        """Return the JSON array at ``parent[key]`` (empty if optional and absent)."""
        here = _join(path, key)
        if key not in parent:
            if required:
                self.fail(here, "is missing", "Add it as a JSON array (see build_* for the shape)")
            return []
        value = parent[key]
        if not isinstance(value, list):
            self.fail(here, f"must be a JSON array, got {_show(value)}", "Make it an array")
        if nonempty and not value:
            self.fail(here, "must not be empty", "Add at least one entry (see build_*)")
        return value

    def item(self, value: Any, path: str) -> Mapping[str, Any]:
        """Return an array element that must be a JSON object."""
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a JSON object, got {_show(value)}", "Make it an object")
        return value


def _join(path: str, key: str) -> str:
    """Return the dotted key path ``path.key``."""
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    """Return a short description of a bad value for an error message."""
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _check_kind(kind: str) -> TemplateKind:
    """Return ``kind`` if it is a template kind, else raise ConfigError."""
    for known in KINDS:
        if kind == known:
            return known
    raise ConfigError(f"unknown template kind {kind!r}. Use one of: {', '.join(KINDS)}.")


def _check_name(name: object, source: str, kind: TemplateKind) -> str:
    """Return ``name`` if it is a valid template name of ``kind``, else raise ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{source}: the template name must be a non-empty string, got {name!r}. "
            "Use letters, digits, '-' and '_' only."
        )
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{source}: template name {name!r} has characters other than letters, digits, "
            "'-' and '_'. Rename it (in a file, rename the key of the JSON object)."
        )
    return check_name_length(name, source, kind)


def check_name_length(name: str, source: str, kind: str) -> str:
    """Return ``name`` if it is short enough for a template of ``kind``, else raise ConfigError.

    Parameters
    ----------
    name : str
        The template's name.
    source : str
        Where the name came from; the error names it.
    kind : str
        ``"scaleset"``, ``"vm"`` or ``"nic"``.

    Returns
    -------
    str
        ``name``.

    Raises
    ------
    ConfigError
        The name is longer than ``MAX_TEMPLATE_NAME_CHARS[kind]``.
    """
    limit = MAX_TEMPLATE_NAME_CHARS[_check_kind(kind)]
    if len(name) <= limit:
        return name
    why = {
        "scaleset": (
            f"a cluster's scale set is named NAME-xxxxxx and a Flexible scale set's VMs "
            f"NAME-xxxxxx_xxxxxxxx, which Azure limits to {AZURE_NAME_MAX_CHARS} characters"
        ),
        "vm": f"it becomes the VM's computer name, which Linux limits to {AZURE_NAME_MAX_CHARS}",
        "nic": f"Azure resource names are kept to {AZURE_NAME_MAX_CHARS}",
    }[kind]
    raise ConfigError(
        f"{source}: template name {name[:20]!r}... has {len(name)} characters; a {kind} "
        f"template name may have at most {limit} characters ({why}). Pick a shorter name "
        "(in a file, rename the key of the JSON object)."
    )


def template_provider(template: Mapping[str, Any]) -> str:
    """Return the provider a scale-set or VM template asks for: ``"local"`` or ``"azure"``.

    Parameters
    ----------
    template : Mapping
        A template; one without a ``provider`` key is an Azure template.

    Returns
    -------
    str
        ``"local"`` or ``"azure"``.

    Raises
    ------
    ConfigError
        The template is not a JSON object or names an unknown provider.
    """
    if not isinstance(template, Mapping):
        raise ConfigError(
            f"a template must be a JSON object, got {_show(template)}. "
            "Build one with build_sstemplate or build_vmtemplate."
        )
    provider = template.get("provider", PROVIDER_AZURE)
    if provider not in PROVIDERS:
        raise ConfigError(
            f"template key provider: unknown provider {provider!r}. "
            "Set it to 'local' or 'azure' (or leave it out for Azure)."
        )
    return str(provider)


# ---------------------------------------------------------------------------------------------
# Validation of each kind
# ---------------------------------------------------------------------------------------------


def _check_local(
    check: _Check, template: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate a local template and return it with the defaults filled in."""
    unknown = sorted(str(key) for key in set(template) - set(defaults))
    if unknown:
        check.fail(
            unknown[0],
            f"is not a local-template key (unknown: {', '.join(unknown)})",
            f"Use only: {', '.join(defaults)}",
        )
    check.integer(
        template,
        "max_instances",
        "",
        minimum=1,
        maximum=MAX_LOCAL_INSTANCES,
        fix="Set it to how many process-VMs this machine may run at once",
    )
    check.integer(
        template, "nthreads", "", minimum=1, fix="Set it to the threads per Dask worker, e.g. 1"
    )
    check.integer(
        template,
        "max_replacements",
        "",
        minimum=0,
        fix="Set it to how many failed instances may be replaced, e.g. 3",
    )
    for key in ("join_timeout_s", "death_timeout_s"):
        if key in template:
            value = template[key]
            good = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            )
            if not good:
                check.fail(
                    key,
                    f"must be a positive number of seconds, got {_show(value)}",
                    f"Set it to e.g. {defaults[key]}",
                )
    if "memory_limit" in template:
        _check_memory_limit(check, template["memory_limit"])
    filled = dict(defaults)
    filled.update(copy.deepcopy(dict(template)))
    return filled


def _check_memory_limit(check: _Check, value: Any) -> None:
    """Check a local template's memory_limit: "auto", bytes, or a size such as "2GiB"."""
    fix = 'Set it to "auto", a number of bytes, or a size such as "2GiB"'
    if isinstance(value, bool):
        check.fail("memory_limit", f"must not be a boolean, got {_show(value)}", fix)
    if isinstance(value, int):
        if value <= 0:
            check.fail("memory_limit", f"must be a positive number of bytes, got {value}", fix)
        return
    if isinstance(value, str):
        if value == "auto":
            return
        match = MEMORY_RE.fullmatch(value)
        if match and float(match.group(1)) > 0:
            return
    check.fail("memory_limit", f"is not a memory size: {_show(value)}", fix)


def _check_image_reference(check: _Check, storage: Mapping[str, Any], path: str) -> None:
    """Check a storageProfile.imageReference (a gallery or managed image id, or a market image)."""
    ref = check.mapping(storage, "imageReference", path)
    here = _join(path, "imageReference")
    if ref is None:  # pragma: no cover - mapping() fails when required
        return
    if "id" in ref:
        image_id = ref["id"]
        if not isinstance(image_id, str) or not IMAGE_ID_RE.fullmatch(image_id):
            check.fail(
                _join(here, "id"),
                f"is not an ARM image id: {_show(image_id)}",
                f"Use {IMAGE_ID_FORMAT} (optionally ending /versions/{{version}})",
            )
        return
    for key in ("publisher", "offer", "sku"):
        check.string(
            ref,
            key,
            here,
            fix="Give either id (a gallery image id) or publisher, offer, sku and version",
        )


def _check_storage(check: _Check, parent: Mapping[str, Any], path: str) -> None:
    """Check a storageProfile: image, OS disk and data disks."""
    storage = check.mapping(parent, "storageProfile", path)
    here = _join(path, "storageProfile")
    if storage is None:  # pragma: no cover - mapping() fails when required
        return
    _check_image_reference(check, storage, here)
    osdisk = check.mapping(storage, "osDisk", here, required=False)
    if osdisk is not None:
        osdisk_path = _join(here, "osDisk")
        check.integer(
            osdisk,
            "diskSizeGB",
            osdisk_path,
            minimum=1,
            fix=f"Set the OS disk size in GB, e.g. {DEFAULT_OSDISK_SIZE_GB}",
        )
        check.string(osdisk, "createOption", osdisk_path, required=False, fix="Use FromImage")
        managed = check.mapping(osdisk, "managedDisk", osdisk_path, required=False)
        if managed is not None:
            check.string(
                managed,
                "storageAccountType",
                _join(osdisk_path, "managedDisk"),
                required=False,
                fix=f"Use a disk type such as {DEFAULT_OSDISK_STORAGE}",
            )
    disks = check.array(storage, "dataDisks", here, required=False, nonempty=False)
    seen: dict[int, int] = {}
    for index, raw in enumerate(disks):
        disk_path = f"{here}.dataDisks[{index}]"
        disk = check.item(raw, disk_path)
        check.integer(
            disk,
            "lun",
            disk_path,
            minimum=0,
            maximum=MAX_DATADISK_LUN,
            required=True,
            fix="Give each data disk its own lun (build_* numbers them from 1)",
        )
        lun = int(disk["lun"])
        if lun in seen:
            check.fail(
                f"{disk_path}.lun",
                f"lun {lun} is also used by dataDisks[{seen[lun]}]",
                "Give each data disk its own lun",
            )
        seen[lun] = index
        check.integer(
            disk,
            "diskSizeGB",
            disk_path,
            minimum=1,
            required=True,
            fix=f"Set the data disk size in GB, e.g. {DEFAULT_DATADISK_SIZE_GB}",
        )
        check.string(disk, "createOption", disk_path, required=False, fix="Use Empty")
        managed = check.mapping(disk, "managedDisk", disk_path, required=False)
        if managed is not None:
            check.string(
                managed,
                "storageAccountType",
                _join(disk_path, "managedDisk"),
                required=False,
                fix=f"Use a disk type such as {DEFAULT_DATADISK_STORAGE}",
            )


def _check_os_profile(check: _Check, parent: Mapping[str, Any], path: str, name_key: str) -> None:
    """Check an osProfile (computer name or prefix, admin user, Linux ssh settings)."""
    profile = check.mapping(parent, "osProfile", path)
    here = _join(path, "osProfile")
    if profile is None:  # pragma: no cover - mapping() fails when required
        return
    host = check.string(
        profile,
        name_key,
        here,
        required=name_key == "computerNamePrefix",
        fix="Set it to a short host name, e.g. the template name",
    )
    limit = (
        COMPUTER_NAME_PREFIX_MAX_CHARS if name_key == "computerNamePrefix" else AZURE_NAME_MAX_CHARS
    )
    if host is not None and len(host) > limit:
        check.fail(
            _join(here, name_key),
            f"has {len(host)} characters, more than Azure's {limit} for a Linux VM",
            f"Shorten it to at most {limit} characters",
        )
    check.string(
        profile, "adminUsername", here, fix="Set it to the user name on the VMs, e.g. azureuser"
    )
    linux = check.mapping(profile, "linuxConfiguration", here, required=False)
    if linux is not None:
        linux_path = _join(here, "linuxConfiguration")
        check.boolean(linux, "disablePasswordAuthentication", linux_path)
        ssh = check.mapping(linux, "ssh", linux_path, required=False)
        if ssh is not None:
            check.array(ssh, "publicKeys", _join(linux_path, "ssh"), required=False, nonempty=False)


def _check_subnet(check: _Check, ipconfig: Mapping[str, Any], path: str) -> None:
    """Check ``properties.subnet.id`` of an IP configuration."""
    props = check.mapping(ipconfig, "properties", path)
    props_path = _join(path, "properties")
    if props is None:  # pragma: no cover - mapping() fails when required
        return
    subnet = check.mapping(props, "subnet", props_path)
    if subnet is None:  # pragma: no cover - mapping() fails when required
        return
    subnet_id = check.get(subnet, "id", _join(props_path, "subnet"), fix=f"Use {SUBNET_ID_FORMAT}")
    if not isinstance(subnet_id, str) or not SUBNET_ID_RE.fullmatch(subnet_id):
        check.fail(
            _join(props_path, "subnet.id"),
            f"is not an ARM subnet id: {_show(subnet_id)}",
            f"Use {SUBNET_ID_FORMAT}",
        )


def _check_ipconfigs(check: _Check, parent: Mapping[str, Any], path: str) -> None:
    """Check a non-empty ipConfigurations array."""
    configs = check.array(parent, "ipConfigurations", path, required=True, nonempty=True)
    for index, raw in enumerate(configs):
        item_path = f"{path}.ipConfigurations[{index}]"
        config = check.item(raw, item_path)
        check.string(config, "name", item_path, fix="Name the IP configuration, e.g. ipConfig1")
        _check_subnet(check, config, item_path)


def _check_tags(check: _Check, value: Mapping[str, Any], path: str) -> None:
    """Check optional ARM tags (an object of strings)."""
    tags = check.mapping(value, "tags", path, required=False)
    if tags is None:
        return
    for key, tag in tags.items():
        if not isinstance(tag, str):
            check.fail(
                _join(path, f"tags.{key}"),
                f"must be a string, got {_show(tag)}",
                "Azure tag values are strings; quote it",
            )


def _check_azure_outer(check: _Check, template: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check the outer keys of an Azure scale-set or VM template; return ``value``."""
    subscription = check.string(
        template,
        "subscriptionid",
        "",
        fix="Set it to your Azure subscription id (`az account show --query id`)",
    )
    if subscription is not None and not GUID_RE.fullmatch(subscription):
        check.fail(
            "subscriptionid",
            f"must look like a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), got {subscription!r}",
            "Set it to your Azure subscription id (`az account show --query id`)",
        )
    group = check.string(template, "resourcegroup", "", fix="Set it to the Azure resource group")
    if group is not None and not RESOURCE_GROUP_RE.fullmatch(group):
        check.fail(
            "resourcegroup",
            f"is not a resource group name Azure takes: {group!r}",
            "Use 1 to 90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
        )
    check.string(
        template,
        "tempdisk",
        "",
        required=False,
        allow_empty=True,
        fix='Set it to shell commands that prepare the temporary disk, or to ""',
    )
    value = check.mapping(template, "value", "")
    if value is None:  # pragma: no cover - mapping() fails when required
        return {}
    check.string(value, "location", "value", fix="Set it to an Azure region, e.g. southcentralus")
    _check_tags(check, value, "value")
    return value


def _check_scaleset(check: _Check, template: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an Azure scale-set template (the original's shape)."""
    value = _check_azure_outer(check, template)
    sku = check.mapping(value, "sku", "value")
    if sku is not None:
        check.string(sku, "name", "value.sku", fix="Set it to a VM size, e.g. Standard_D2s_v3")
        check.string(sku, "tier", "value.sku", required=False, fix="Use Standard")
        check.integer(
            sku,
            "capacity",
            "value.sku",
            minimum=0,
            fix="Set it to the number of instances to start with, e.g. 2",
        )
    props = check.mapping(value, "properties", "value")
    if props is None:  # pragma: no cover - mapping() fails when required
        return copy.deepcopy(dict(template))
    path = "value.properties"
    check.boolean(props, "overprovision", path)
    check.boolean(props, "singlePlacementGroup", path)
    capabilities = check.mapping(props, "additionalCapabilities", path, required=False)
    if capabilities is not None:
        check.boolean(capabilities, "ultraSSDEnabled", f"{path}.additionalCapabilities")
    policy = check.mapping(props, "upgradePolicy", path, required=False)
    if policy is not None and "mode" in policy and policy["mode"] not in UPGRADE_MODES:
        check.fail(
            f"{path}.upgradePolicy.mode",
            f"must be one of {', '.join(UPGRADE_MODES)}, got {_show(policy['mode'])}",
            "Use Manual",
        )
    profile = check.mapping(props, "virtualMachineProfile", path)
    if profile is None:  # pragma: no cover - mapping() fails when required
        return copy.deepcopy(dict(template))
    ppath = f"{path}.virtualMachineProfile"
    _check_storage(check, profile, ppath)
    _check_os_profile(check, profile, ppath, "computerNamePrefix")
    security = check.mapping(profile, "securityProfile", ppath, required=False)
    if security is not None:
        check.boolean(security, "encryptionAtHost", f"{ppath}.securityProfile")
    network = check.mapping(profile, "networkProfile", ppath)
    if network is None:  # pragma: no cover - mapping() fails when required
        return copy.deepcopy(dict(template))
    npath = f"{ppath}.networkProfile"
    nics = check.array(
        network, "networkInterfaceConfigurations", npath, required=True, nonempty=True
    )
    for index, raw in enumerate(nics):
        nic_path = f"{npath}.networkInterfaceConfigurations[{index}]"
        nic = check.item(raw, nic_path)
        check.string(nic, "name", nic_path, fix="Name the network configuration")
        nic_props = check.mapping(nic, "properties", nic_path)
        if nic_props is None:  # pragma: no cover - mapping() fails when required
            continue
        nic_props_path = f"{nic_path}.properties"
        check.boolean(nic_props, "primary", nic_props_path)
        check.boolean(nic_props, "enableAcceleratedNetworking", nic_props_path)
        _check_ipconfigs(check, nic_props, nic_props_path)
    return copy.deepcopy(dict(template))


def _check_vm(check: _Check, template: Mapping[str, Any]) -> dict[str, Any]:
    """Validate an Azure VM template (the original's shape, with correct NIC ids)."""
    value = _check_azure_outer(check, template)
    props = check.mapping(value, "properties", "value")
    if props is None:  # pragma: no cover - mapping() fails when required
        return copy.deepcopy(dict(template))
    path = "value.properties"
    hardware = check.mapping(props, "hardwareProfile", path)
    if hardware is not None:
        check.string(
            hardware,
            "vmSize",
            f"{path}.hardwareProfile",
            fix="Set it to a VM size, e.g. Standard_D8s_v3",
        )
    capabilities = check.mapping(props, "additionalCapabilities", path, required=False)
    if capabilities is not None:
        check.boolean(capabilities, "ultraSSDEnabled", f"{path}.additionalCapabilities")
    _check_storage(check, props, path)
    _check_os_profile(check, props, path, "computerName")
    security = check.mapping(props, "securityProfile", path, required=False)
    if security is not None:
        check.boolean(security, "encryptionAtHost", f"{path}.securityProfile")
    network = check.mapping(props, "networkProfile", path)
    if network is None:  # pragma: no cover - mapping() fails when required
        return copy.deepcopy(dict(template))
    npath = f"{path}.networkProfile"
    nics = check.array(network, "networkInterfaces", npath, required=True, nonempty=True)
    for index, raw in enumerate(nics):
        nic_path = f"{npath}.networkInterfaces[{index}]"
        nic = check.item(raw, nic_path)
        nic_id = check.get(nic, "id", nic_path, fix=f"Use {NIC_ID_FORMAT}")
        if isinstance(nic_id, str) and nic_id.startswith("/subscription/"):
            check.fail(
                f"{nic_path}.id",
                f"begins '/subscription/' (a bug of AzManagers.jl's build_vmtemplate): {nic_id!r}",
                "Change it to begin '/subscriptions/', or rebuild the template with "
                "build_vmtemplate",
            )
        if not isinstance(nic_id, str) or not NIC_ID_RE.fullmatch(nic_id):
            check.fail(
                f"{nic_path}.id",
                f"is not an ARM network interface id: {_show(nic_id)}",
                f"Use {NIC_ID_FORMAT}",
            )
        nic_props = check.mapping(nic, "properties", nic_path, required=False)
        if nic_props is not None:
            check.boolean(nic_props, "primary", f"{nic_path}.properties")
    return copy.deepcopy(dict(template))


def _check_nic(check: _Check, template: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a NIC template (the original's shape)."""
    check.string(template, "location", "", fix="Set it to an Azure region, e.g. southcentralus")
    props = check.mapping(template, "properties", "")
    if props is not None:
        check.boolean(props, "enableAcceleratedNetworking", "properties")
        _check_ipconfigs(check, props, "properties")
    return copy.deepcopy(dict(template))


def _validate(
    kind: TemplateKind, name: str, template: Any, source: str, *, check_name: bool
) -> dict[str, Any]:
    """Validate ``template`` of ``kind``; return a deep copy (local defaults filled in)."""
    if check_name:
        _check_name(name, f"{source}, template {name[:60]!r}", kind)
    check = _Check(source, name)
    if not isinstance(template, Mapping):
        check.fail("", f"must be a JSON object, got {_show(template)}", _HOW_TO_CREATE[kind])
    if kind == "nic":
        return _check_nic(check, template)
    provider = template.get("provider", PROVIDER_AZURE)
    if provider not in PROVIDERS:
        check.fail(
            "provider",
            f"unknown provider {_show(provider)}",
            "Set it to 'local' or 'azure' (or leave it out for Azure)",
        )
    if provider == PROVIDER_LOCAL:
        defaults = LOCAL_TEMPLATE_DEFAULTS if kind == "scaleset" else LOCAL_VM_TEMPLATE_DEFAULTS
        return _check_local(check, template, defaults)
    if kind == "scaleset":
        return _check_scaleset(check, template)
    return _check_vm(check, template)


def validate_template(
    kind: str, name: str, template: Mapping[str, Any], *, source: str
) -> dict[str, Any]:
    """Validate a template of ``kind``; return a deep copy with local defaults filled in.

    Parameters
    ----------
    kind : str
        ``"scaleset"``, ``"vm"`` or ``"nic"``.
    name : str
        The template's name: letters, digits, ``-`` and ``_`` only.
    template : Mapping
        The template (see ``build_sstemplate``, ``build_vmtemplate``, ``build_nictemplate``,
        or ``LOCAL_TEMPLATE_DEFAULTS`` for a local scale-set template).
    source : str
        Where the template came from (a file path, or e.g. "the template passed to
        save_template_scaleset"); errors name it.

    Returns
    -------
    dict
        A deep copy of the template; for a local template, every key is present.

    Raises
    ------
    ConfigError
        The kind is unknown, the name is bad, or a value is missing or wrong. The message
        names ``source``, the template name, the key path and the fix.
    """
    return _validate(_check_kind(kind), name, template, source, check_name=True)


# ---------------------------------------------------------------------------------------------
