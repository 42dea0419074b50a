"""Build scale-set, VM and NIC templates (ARM request bodies in the original's JSON shape)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from azmanagers.config.template_parts import (
    EXAMPLE_MARKET_IMAGE,
    computer_name,
    linux_configuration,
    positive_int,
    required,
    storage_profile,
    subnet_id,
)
from azmanagers.config.template_schema import (
    DEFAULT_NIC_NAME,
    DEFAULT_OSDISK_SIZE_GB,
    DEFAULT_SCALESET_CAPACITY,
    DEFAULT_TEMPDISK,
    NIC_ID_FORMAT,
    _validate,
    check_name_length,
)

__all__ = ["EXAMPLE_MARKET_IMAGE", "build_nictemplate", "build_sstemplate", "build_vmtemplate"]


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
        (e.g. ``"Canonical:ubuntu-24_04-lts:server:latest"``). On an image without
        azmanagers the boot script installs the caller's version into a virtualenv, which
        adds a minute or two to each boot.
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
    required(
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
    positive_int(function, "osdisksize", osdisksize)
    # required() has checked these; str() only narrows the types for mypy.
    sub, rg = str(subscriptionid), str(resourcegroup)
    rg_vnet = resourcegroup_vnet or rg
    storage, ultra = storage_profile(
        function,
        image=image,
        gallery=imagegallery,
        imagename=imagename,
        subscriptionid=subscriptionid_image or sub,
        resourcegroup=resourcegroup_image or rg,
        osdisksize=osdisksize,
        datadisks=datadisks,
    )
    computer = computer_name(name)
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
                    "linuxConfiguration": linux_configuration(),
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
                                                "id": subnet_id(
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
        (e.g. ``"Canonical:ubuntu-24_04-lts:server:latest"``). On an image without
        azmanagers the boot script installs the caller's version into a virtualenv, which
        adds a minute or two to each boot.
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
    required(
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
    positive_int(function, "osdisksize", osdisksize)
    sub, rg = str(subscriptionid), str(resourcegroup)
    rg_vnet = resourcegroup_vnet or rg
    storage, ultra = storage_profile(
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
                "computerName": computer_name(name),
                "adminUsername": admin_username,
                "linuxConfiguration": linux_configuration(),
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
    required(
        function,
        name=name,
        subscriptionid=subscriptionid,
        resourcegroup_vnet=resourcegroup_vnet,
        vnet=vnet,
        subnet=subnet,
        location=location,
    )
    check_name_length(name, f"{function}({name[:60]!r}, ...)", "nic")
    subnet = subnet_id(str(subscriptionid), str(resourcegroup_vnet), str(vnet), str(subnet))
    template = {
        "location": location,
        "properties": {
            "enableAcceleratedNetworking": accelerated,
            "ipConfigurations": [{"name": "ipConfig1", "properties": {"subnet": {"id": subnet}}}],
        },
    }
    source = f"the template built by {function}"
    return _validate("nic", name, template, source, check_name=False)
