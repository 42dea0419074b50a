"""Build scale-set, VM and NIC templates (ARM request bodies in the original's JSON shape)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from azmanagers.config.template_schema import (
    DEFAULT_DATADISK_SIZE_GB,
    DEFAULT_DATADISK_STORAGE,
    DEFAULT_NIC_NAME,
    DEFAULT_OSDISK_SIZE_GB,
    DEFAULT_OSDISK_STORAGE,
    DEFAULT_SCALESET_CAPACITY,
    DEFAULT_TEMPDISK,
    FIRST_DATADISK_LUN,
    IMAGE_ID_FORMAT,
    NIC_ID_FORMAT,
    SUBNET_ID_FORMAT,
    ULTRA_SSD_STORAGE,
    _validate,
    check_name_length,
)
from azmanagers.errors import ConfigError

EXAMPLE_MARKET_IMAGE = "Canonical:ubuntu-24_04-lts:server:latest"
"""A stock image: instances install azmanagers at boot (an image with it boots faster)."""

# Building templates
# ---------------------------------------------------------------------------------------------


def _required(function: str, **values: str | None) -> None:
    """Raise ConfigError naming the first missing or empty required keyword."""
    for key, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{function}: keyword {key!r} is required and must be a non-empty string, "
                f"got {value!r}. Pass {key}=... (see help({function}))."
            )


def _positive_int(function: str, key: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{function}: keyword {key!r} must be a positive integer (GB), got {value!r}. "
            f"Pass e.g. {key}={DEFAULT_OSDISK_SIZE_GB}."
        )


def _computer_name(name: str) -> str:
    """Return a host-name-friendly form of a template name (as the original did)."""
    return name.split("/")[-1].replace("+", "plus")


def _subnet_id(subscriptionid: str, resourcegroup: str, vnet: str, subnet: str) -> str:
    """Return the ARM id of a subnet."""
    return SUBNET_ID_FORMAT.format(sub=subscriptionid, rg=resourcegroup, vnet=vnet, subnet=subnet)


def _image_id(subscriptionid: str, resourcegroup: str, gallery: str, image: str) -> str:
    """Return the ARM id of a gallery image."""
    return IMAGE_ID_FORMAT.format(
        sub=subscriptionid, rg=resourcegroup, gallery=gallery, image=image
    )


def _data_disks(
    function: str, datadisks: Sequence[Mapping[str, Any]] | None
) -> tuple[list[dict[str, Any]], bool]:
    """Return data-disk entries (defaults filled, luns from 1) and whether any is Ultra SSD."""
    disks: list[dict[str, Any]] = []
    ultra = False
    for index, given in enumerate(datadisks or ()):
        if not isinstance(given, Mapping):
            raise ConfigError(
                f"{function}: datadisks[{index}] must be a dict (e.g. {{'diskSizeGB': 1023}}), "
                f"got {given!r}."
            )
        disk: dict[str, Any] = {
            "createOption": "Empty",
            "diskSizeGB": DEFAULT_DATADISK_SIZE_GB,
            "managedDisk": {"storageAccountType": DEFAULT_DATADISK_STORAGE},
        }
        disk.update(copy.deepcopy(dict(given)))
        disk["lun"] = FIRST_DATADISK_LUN + index
        managed = disk.get("managedDisk")
        if isinstance(managed, Mapping) and managed.get("storageAccountType") == ULTRA_SSD_STORAGE:
            ultra = True
        disks.append(disk)
    return disks, ultra


def _image_reference(
    function: str,
    *,
    image: str | None,
    gallery: str | None,
    imagename: str | None,
    subscriptionid: str,
    resourcegroup: str,
) -> dict[str, str]:
    """Return an imageReference: a market image from its URN, or a gallery image by id."""
    if image is not None:
        if gallery is not None or imagename is not None:
            raise ConfigError(
                f"{function}: give either image=... (a market image) or imagegallery=... and "
                "imagename=... (a gallery image), not both."
            )
        parts = image.split(":") if isinstance(image, str) else []
        if len(parts) != 4 or not all(part.strip() for part in parts):
            raise ConfigError(
                f"{function}: image must be a market image URN 'publisher:offer:sku:version', "
                f"e.g. {EXAMPLE_MARKET_IMAGE!r}; got {image!r}."
            )
        publisher, offer, sku, version = parts
        return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}
    if not (isinstance(gallery, str) and gallery.strip()) or not (
        isinstance(imagename, str) and imagename.strip()
    ):
        raise ConfigError(
            f"{function}: give the image: imagegallery=... and imagename=... (a gallery image), "
            f"or image='publisher:offer:sku:version' (a market image, e.g. "
            f"{EXAMPLE_MARKET_IMAGE!r}); got imagegallery={gallery!r}, imagename={imagename!r}."
        )
    return {"id": _image_id(subscriptionid, resourcegroup, str(gallery), str(imagename))}


def _storage_profile(
    function: str,
    *,
    image: str | None,
    gallery: str | None,
    imagename: str | None,
    subscriptionid: str,
    resourcegroup: str,
    osdisksize: int,
    datadisks: Sequence[Mapping[str, Any]] | None,
) -> tuple[dict[str, Any], bool]:
    """Return a storageProfile (image, OS disk, data disks) and whether a disk is Ultra SSD.

    ``subscriptionid`` and ``resourcegroup`` are those of the gallery, for a gallery image.
    """
    disks, ultra = _data_disks(function, datadisks)
    reference = _image_reference(
        function,
        image=image,
        gallery=gallery,
        imagename=imagename,
        subscriptionid=subscriptionid,
        resourcegroup=resourcegroup,
    )
    return {
        "imageReference": reference,
        "osDisk": {
            "caching": "ReadWrite",
            "managedDisk": {"storageAccountType": DEFAULT_OSDISK_STORAGE},
            "createOption": "FromImage",
            "diskSizeGB": osdisksize,
        },
        "dataDisks": disks,
    }, ultra


def _linux_configuration() -> dict[str, Any]:
    """Return a linuxConfiguration with ssh keys only (the keys are added at provisioning)."""
    return {"ssh": {"publicKeys": []}, "disablePasswordAuthentication": True}


def build_sstemplate(
    name: str,
    *,
    subscriptionid: str | None = None,
    admin_username: str | None = None,
    location: str | None = None,
    resourcegroup: str | None = None,
    vnet: str | None = None,
    subnet: str | None = None,
    imagegallery: str | None = None,
    imagename: str | None = None,
    image: str | None = None,
    skuname: str | None = None,
    subscriptionid_image: str | None = None,
    resourcegroup_vnet: str | None = None,
    resourcegroup_image: str | None = None,
    skutier: str = "Standard",
    osdisksize: int = DEFAULT_OSDISK_SIZE_GB,
    datadisks: Sequence[Mapping[str, Any]] | None = None,
    tempdisk: str = DEFAULT_TEMPDISK,
    tags: Mapping[str, str] | None = None,
    encryption_at_host: bool = False,
) -> dict[str, Any]:
    """Build an Azure scale-set template in the original AzManagers shape.

    Parameters
    ----------
    name : str
        Used for the computer-name prefix and the network configuration names.
    subscriptionid, admin_username, location, resourcegroup : str
        Required: subscription (a GUID), user on the VMs, Azure region, resource group.
    vnet, subnet : str
        Required: virtual network and subnet of the instances.
    imagegallery, imagename : str
        The Azure compute gallery and image the instances boot (or give ``image``).
    image : str, optional
        Instead of a gallery image, a market image URN ``publisher:offer:sku:version``
        (e.g. ``"{EXAMPLE}"``). On an image without azmanagers the boot script installs
        the caller's version into a virtualenv, which adds a minute or two to each boot.
    skuname : str
        Required: the VM size, e.g. ``Standard_D2s_v3``.
    subscriptionid_image : str, optional
        Subscription of the gallery, by default ``subscriptionid``.
    resourcegroup_vnet, resourcegroup_image : str, optional
        Resource groups of the network and of the gallery, by default ``resourcegroup``.
    skutier : str, optional
        The SKU tier, by default "Standard".
    osdisksize : int, optional
        OS disk size in GB, by default 60.
    datadisks : sequence of dict, optional
        Data disks; each is merged over ``{"createOption": "Empty", "diskSizeGB": 1023,
        "managedDisk": {"storageAccountType": "Premium_LRS"}}`` and given lun 1, 2, ...
    tempdisk : str, optional
        Shell commands that prepare the temporary disk at boot.
    tags : dict of str, optional
        ARM tags for the scale set.
    encryption_at_host : bool, optional
        Enable encryption at host, by default False.

    Returns
    -------
    dict
        ``{"subscriptionid", "resourcegroup", "tempdisk", "value": <scale-set body>}``.

    Raises
    ------
    ConfigError
        A required keyword is missing or empty, or a value is wrong.
    """
    function = "build_sstemplate"
    _required(
        function,
        name=name,
        subscriptionid=subscriptionid,
        admin_username=admin_username,
        location=location,
        resourcegroup=resourcegroup,
        vnet=vnet,
        subnet=subnet,
        skuname=skuname,
    )
    check_name_length(name, f"{function}({name[:60]!r}, ...)", "scaleset")
    _positive_int(function, "osdisksize", osdisksize)
    # _required has checked these; str() only narrows the types for mypy.
    sub, rg = str(subscriptionid), str(resourcegroup)
    rg_vnet = resourcegroup_vnet or rg
    storage, ultra = _storage_profile(
        function,
        image=image,
        gallery=imagegallery,
        imagename=imagename,
        subscriptionid=subscriptionid_image or sub,
        resourcegroup=resourcegroup_image or rg,
        osdisksize=osdisksize,
        datadisks=datadisks,
    )
    computer = _computer_name(name)
    value: dict[str, Any] = {
        "sku": {"tier": skutier, "capacity": DEFAULT_SCALESET_CAPACITY, "name": skuname},
        "location": location,
        "properties": {
            "overprovision": True,
            "singlePlacementGroup": False,
            "additionalCapabilities": {"ultraSSDEnabled": ultra},
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": storage,
                "osProfile": {
                    "computerNamePrefix": computer,
                    "adminUsername": admin_username,
                    "linuxConfiguration": _linux_configuration(),
                },
                "securityProfile": {"encryptionAtHost": encryption_at_host},
                # boot diagnostics with managed storage: azmanagers reads the serial log
                "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {
                            "name": computer,
                            "properties": {
                                "primary": True,
                                "ipConfigurations": [
                                    {
                                        "name": computer,
                                        "properties": {
                                            "subnet": {
                                                "id": _subnet_id(
                                                    sub, rg_vnet, str(vnet), str(subnet)
                                                )
                                            }
                                        },
                                    }
                                ],
                            },
                        }
                    ]
                },
            },
        },
    }
    if tags:
        value["tags"] = dict(tags)
    template = {"subscriptionid": sub, "resourcegroup": rg, "tempdisk": tempdisk, "value": value}
    source = f"the template built by {function}"
    return _validate("scaleset", name, template, source, check_name=False)


def build_vmtemplate(
    name: str,
    *,
    subscriptionid: str | None = None,
    admin_username: str | None = None,
    location: str | None = None,
    resourcegroup: str | None = None,
    imagegallery: str | None = None,
    imagename: str | None = None,
    image: str | None = None,
    vmsize: str | None = None,
    nicname: str = DEFAULT_NIC_NAME,
    subscriptionid_image: str | None = None,
    resourcegroup_vnet: str | None = None,
    resourcegroup_image: str | None = None,
    osdisksize: int = DEFAULT_OSDISK_SIZE_GB,
    datadisks: Sequence[Mapping[str, Any]] | None = None,
    tempdisk: str = DEFAULT_TEMPDISK,
    tags: Mapping[str, str] | None = None,
    encryption_at_host: bool = False,
    managed_identity: bool = False,
) -> dict[str, Any]:
    """Build an Azure VM template (for detached VMs) in the original AzManagers shape.

    Unlike the original, the network interface id begins ``/subscriptions/``.

    Parameters
    ----------
    name : str
        The VM's computer name.
    subscriptionid, admin_username, location, resourcegroup : str
        Required: subscription (a GUID), user on the VM, Azure region, resource group.
    imagegallery, imagename : str
        The Azure compute gallery and image the VM boots (or give ``image``).
    image : str, optional
        Instead of a gallery image, a market image URN ``publisher:offer:sku:version``
        (e.g. ``"{EXAMPLE}"``). On an image without azmanagers the boot script installs
        the caller's version into a virtualenv, which adds a minute or two to each boot.
    vmsize : str
        Required: the VM size, e.g. ``Standard_D8s_v3``.
    nicname : str, optional
        Name of the VM's network interface, by default "cbox-nic".
    subscriptionid_image : str, optional
        Subscription of the gallery, by default ``subscriptionid``.
    resourcegroup_vnet, resourcegroup_image : str, optional
        Resource groups of the network interface and of the gallery, by default
        ``resourcegroup``.
    osdisksize : int, optional
        OS disk size in GB, by default 60.
    datadisks : sequence of dict, optional
        Data disks, as for ``build_sstemplate``.
    tempdisk : str, optional
        Shell commands that prepare the temporary disk at boot.
    tags : dict of str, optional
        ARM tags for the VM.
    encryption_at_host : bool, optional
        Enable encryption at host, by default False.
    managed_identity : bool, optional
        Give the VM a system-assigned managed identity, by default False. A detached VM
        needs one (with a role allowing it to delete itself, e.g. Virtual Machine
        Contributor on its resource group) to run ``persist=False`` jobs.

    Returns
    -------
    dict
        ``{"subscriptionid", "resourcegroup", "tempdisk", "value": <VM body>}``.

    Raises
    ------
    ConfigError
        A required keyword is missing or empty, or a value is wrong.
    """
    function = "build_vmtemplate"
    _required(
        function,
        name=name,
        subscriptionid=subscriptionid,
        admin_username=admin_username,
        location=location,
        resourcegroup=resourcegroup,
        vmsize=vmsize,
        nicname=nicname,
    )
    check_name_length(name, f"{function}({name[:60]!r}, ...)", "vm")
    _positive_int(function, "osdisksize", osdisksize)
    sub, rg = str(subscriptionid), str(resourcegroup)
    rg_vnet = resourcegroup_vnet or rg
    storage, ultra = _storage_profile(
        function,
        image=image,
        gallery=imagegallery,
        imagename=imagename,
        subscriptionid=subscriptionid_image or sub,
        resourcegroup=resourcegroup_image or rg,
        osdisksize=osdisksize,
        datadisks=datadisks,
    )
    value: dict[str, Any] = {
        "location": location,
        "properties": {
            "additionalCapabilities": {"ultraSSDEnabled": ultra},
            "hardwareProfile": {"vmSize": vmsize},
            "storageProfile": storage,
            "osProfile": {
                "computerName": _computer_name(name),
                "adminUsername": admin_username,
                "linuxConfiguration": _linux_configuration(),
            },
            "securityProfile": {"encryptionAtHost": encryption_at_host},
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
            "networkProfile": {
                "networkInterfaces": [
                    {
                        "id": NIC_ID_FORMAT.format(sub=sub, rg=rg_vnet, nic=nicname),
                        "properties": {"primary": True},
                    }
                ]
            },
        },
    }
    if tags:
        value["tags"] = dict(tags)
    if managed_identity:
        value["identity"] = {"type": "SystemAssigned"}
    template = {"subscriptionid": sub, "resourcegroup": rg, "tempdisk": tempdisk, "value": value}
    source = f"the template built by {function}"
    return _validate("vm", name, template, source, check_name=False)


def build_nictemplate(
    name: str,
    *,
    subscriptionid: str | None = None,
    resourcegroup_vnet: str | None = None,
    vnet: str | None = None,
    subnet: str | None = None,
    location: str | None = None,
    accelerated: bool = True,
) -> dict[str, Any]:
    """Build a network interface template in the original AzManagers shape.

    Parameters
    ----------
    name : str
        The template's name (not part of the body).
    subscriptionid : str
        Required: the subscription of the virtual network.
    resourcegroup_vnet : str
        Required: the resource group of the virtual network.
    vnet, subnet : str
        Required: the virtual network and subnet the interface attaches to.
    location : str
        Required: the Azure region.
    accelerated : bool, optional
        Use accelerated networking (not every VM size supports it), by default True.

    Returns
    -------
    dict
        ``{"location", "properties": {"enableAcceleratedNetworking", "ipConfigurations"}}``.

    Raises
    ------
    ConfigError
        A required keyword is missing or empty, or a value is wrong.
    """
    function = "build_nictemplate"
    _required(
        function,
        name=name,
        subscriptionid=subscriptionid,
        resourcegroup_vnet=resourcegroup_vnet,
        vnet=vnet,
        subnet=subnet,
        location=location,
    )
    check_name_length(name, f"{function}({name[:60]!r}, ...)", "nic")
    subnet_id = _subnet_id(str(subscriptionid), str(resourcegroup_vnet), str(vnet), str(subnet))
    template = {
        "location": location,
        "properties": {
            "enableAcceleratedNetworking": accelerated,
            "ipConfigurations": [
                {"name": "ipConfig1", "properties": {"subnet": {"id": subnet_id}}}
            ],
        },
    }
    source = f"the template built by {function}"
    return _validate("nic", name, template, source, check_name=False)


# ---------------------------------------------------------------------------------------------
# Files
