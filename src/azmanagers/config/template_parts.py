"""The pieces the template builders share: required keywords, image, disks, ARM ids."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from azmanagers.config.template_schema import (
    DEFAULT_DATADISK_SIZE_GB,
    DEFAULT_DATADISK_STORAGE,
    DEFAULT_OSDISK_SIZE_GB,
    DEFAULT_OSDISK_STORAGE,
    FIRST_DATADISK_LUN,
    IMAGE_ID_FORMAT,
    SUBNET_ID_FORMAT,
    ULTRA_SSD_STORAGE,
)
from azmanagers.errors import ConfigError

EXAMPLE_MARKET_IMAGE = "Canonical:ubuntu-24_04-lts:server:latest"
"""A stock image: instances install azmanagers at boot (an image with it boots faster)."""


def required(function: str, **values: str | None) -> None:
    """Raise ConfigError naming the first missing or empty required keyword."""
    for key, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"{function}: keyword {key!r} is required and must be a non-empty string, "
                f"got {value!r}. Pass {key}=... (see help({function}))."
            )


def positive_int(function: str, key: str, value: object) -> None:
    """Raise ConfigError unless ``value`` is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"{function}: keyword {key!r} must be a positive integer (GB), got {value!r}. "
            f"Pass e.g. {key}={DEFAULT_OSDISK_SIZE_GB}."
        )


def computer_name(name: str) -> str:
    """Return a host-name-friendly form of a template name (as the original did)."""
    return name.split("/")[-1].replace("+", "plus")


def subnet_id(subscriptionid: str, resourcegroup: str, vnet: str, subnet: str) -> str:
    """Return the ARM id of a subnet."""
    return SUBNET_ID_FORMAT.format(sub=subscriptionid, rg=resourcegroup, vnet=vnet, subnet=subnet)


def image_id(subscriptionid: str, resourcegroup: str, gallery: str, image: str) -> str:
    """Return the ARM id of a gallery image."""
    return IMAGE_ID_FORMAT.format(
        sub=subscriptionid, rg=resourcegroup, gallery=gallery, image=image
    )


def data_disks(
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


def image_reference(
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
    return {"id": image_id(subscriptionid, resourcegroup, str(gallery), str(imagename))}


def storage_profile(
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
    disks, ultra = data_disks(function, datadisks)
    reference = image_reference(
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


def linux_configuration() -> dict[str, Any]:
    """Return a linuxConfiguration with ssh keys only (the keys are added at provisioning)."""
    return {"ssh": {"publicKeys": []}, "disablePasswordAuthentication": True}
