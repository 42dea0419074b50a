"""The ``azm template add-scaleset|add-vm|add-nic`` commands and their options."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from azmanagers.cli.options import (
    DatadiskOption,
    EncryptionOption,
    GalleryOption,
    ImageOption,
    ImageResourceGroupOption,
    ImageSubscriptionOption,
    LocationOption,
    OsDiskOption,
    ResourceGroupOption,
    SubscriptionOption,
    TagOption,
    TempdiskOption,
    option,
    require_given,
)
from azmanagers.config import manifest as _manifest
from azmanagers.config import template_schema as _schema
from azmanagers.config import templates as _templates
from azmanagers.errors import ConfigError

NameArgument = Annotated[
    str,
    typer.Argument(
        help=(
            "Template name: letters, digits, '-' and '_' "
            f"(at most {_schema.MAX_TEMPLATE_NAME_CHARS['scaleset']} for a scale set)."
        ),
        show_default=False,
    ),
]


def _manifest_or_none() -> _manifest.Manifest | None:
    """Return the manifest if there is one, else None (a corrupt one still raises)."""
    if not _manifest.manifest_path().exists():
        return None
    return _manifest.load_manifest()


def _manifest_defaults(
    subscriptionid: str | None, resourcegroup: str | None, admin_username: str | None
) -> tuple[str | None, str | None, str | None]:
    """Fill the subscription, resource group and VM user not given from the manifest."""
    manifest = _manifest_or_none()
    if manifest is None:
        return subscriptionid, resourcegroup, admin_username
    return (
        subscriptionid or manifest.subscriptionid,
        resourcegroup or manifest.resourcegroup,
        admin_username or manifest.ssh_user,
    )


def _refuse_azure_options(command: str, azure_options: dict[str, Any]) -> None:
    """Raise ConfigError when an Azure-only option was given with ``--local``."""
    wrong = _given(azure_options)
    if wrong:
        raise ConfigError(
            f"{command} --local takes no Azure options, got {', '.join(wrong)}. "
            "Drop them, or drop --local for an Azure template."
        )


def _parse_tags(tags: list[str] | None) -> dict[str, str]:
    """Parse ``--tag KEY=VALUE`` options."""
    parsed: dict[str, str] = {}
    for tag in tags or []:
        key, sep, value = tag.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tag {tag!r} is not KEY=VALUE. Write e.g. --tag project=seismic.")
        parsed[key.strip()] = value
    return parsed


def _parse_datadisks(datadisks: list[str] | None) -> list[dict[str, Any]]:
    """Parse ``--datadisk SIZE_GB[:STORAGE_TYPE]`` options."""
    disks: list[dict[str, Any]] = []
    for text in datadisks or []:
        size, _, storage = text.partition(":")
        if not size.strip().isdigit() or int(size) < 1:
            raise ConfigError(
                f"--datadisk {text!r} must be SIZE_GB[:STORAGE_TYPE] with a positive size. "
                "Write e.g. --datadisk 1023 or --datadisk 512:UltraSSD_LRS."
            )
        disk: dict[str, Any] = {"diskSizeGB": int(size)}
        if storage.strip():
            disk["managedDisk"] = {"storageAccountType": storage.strip()}
        disks.append(disk)
    return disks


def _memory_limit(value: str) -> str | int:
    """Return ``--memory-limit`` as an int of bytes when it is all digits, else as given."""
    return int(value) if value.strip().isdigit() else value


def _given(options: dict[str, Any]) -> list[str]:
    """Return the names of the options that were given (not None, not False, not empty)."""
    return [name for name, value in options.items() if value not in (None, False, [])]


def _save(kind: str, name: str, template: dict[str, Any]) -> None:
    """Save a template of ``kind`` and print where it went."""
    existed = name in _templates.stored_template_names(kind)
    save = {
        "scaleset": _templates.save_template_scaleset,
        "vm": _templates.save_template_vm,
        "nic": _templates.save_template_nic,
    }[kind]
    path = save(name, template)
    note = " (replaced the previous one)" if existed else ""
    typer.echo(f"Saved {kind} template {name!r} to {path}{note}.")


def template_add_scaleset(
    name: NameArgument,
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="A local template: process-VMs on this machine, no Azure options."
        ),
    ] = False,
    subscriptionid: SubscriptionOption = None,
    admin_username: Annotated[
        str | None, option("User on the VMs (default: manifest ssh_user).")
    ] = (None),
    location: LocationOption = None,
    resourcegroup: ResourceGroupOption = None,
    vnet: Annotated[str | None, option("Virtual network of the instances.")] = None,
    subnet: Annotated[str | None, option("Subnet of the instances.")] = None,
    imagegallery: GalleryOption = None,
    imagename: ImageOption = None,
    skuname: Annotated[str | None, option("VM size, e.g. Standard_D2s_v3.")] = None,
    subscriptionid_image: ImageSubscriptionOption = None,
    resourcegroup_vnet: Annotated[
        str | None, option("Resource group of the network (default: --resourcegroup).")
    ] = None,
    resourcegroup_image: ImageResourceGroupOption = None,
    skutier: Annotated[str | None, option("SKU tier (default: Standard).")] = None,
    osdisksize: OsDiskOption = None,
    datadisk: DatadiskOption = None,
    tempdisk: TempdiskOption = None,
    tag: TagOption = None,
    encryption_at_host: EncryptionOption = False,
    max_instances: Annotated[
        int | None, option("--local: most process-VMs at once (default: 16).")
    ] = None,
    nthreads: Annotated[
        int | None, option("--local: threads per Dask worker (default: 1).")
    ] = None,
    memory_limit: Annotated[
        str | None, option("--local: worker memory: auto, bytes, or e.g. 2GiB (default: auto).")
    ] = None,
    join_timeout_s: Annotated[
        float | None, option("--local: seconds an instance has to join (default: 120).")
    ] = None,
    max_replacements: Annotated[
        int | None, option("--local: failed instances replaced at most (default: 3).")
    ] = None,
    death_timeout_s: Annotated[
        float | None, option("--local: seconds a worker waits for a lost scheduler (default: 30).")
    ] = None,
) -> None:
    """Add (or replace) a scale-set template: Azure by default, or --local."""
    command = "azm template add-scaleset"
    azure_options = {
        "--subscriptionid": subscriptionid,
        "--admin-username": admin_username,
        "--location": location,
        "--resourcegroup": resourcegroup,
        "--vnet": vnet,
        "--subnet": subnet,
        "--imagegallery": imagegallery,
        "--imagename": imagename,
        "--skuname": skuname,
        "--subscriptionid-image": subscriptionid_image,
        "--resourcegroup-vnet": resourcegroup_vnet,
        "--resourcegroup-image": resourcegroup_image,
        "--skutier": skutier,
        "--osdisksize": osdisksize,
        "--datadisk": datadisk,
        "--tempdisk": tempdisk,
        "--tag": tag,
        "--encryption-at-host": encryption_at_host,
    }
    local_values = {
        "max_instances": max_instances,
        "nthreads": nthreads,
        "memory_limit": None if memory_limit is None else _memory_limit(memory_limit),
        "join_timeout_s": join_timeout_s,
        "max_replacements": max_replacements,
        "death_timeout_s": death_timeout_s,
    }
    if local:
        _refuse_azure_options(command, azure_options)
        template: dict[str, Any] = {"provider": _schema.PROVIDER_LOCAL}
        template.update({key: value for key, value in local_values.items() if value is not None})
        _save("scaleset", name, template)
        return
    wrong = [f"--{key.replace('_', '-')}" for key in _given(local_values)]
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} only apply to local templates. Add --local, or drop them."
        )
    subscriptionid, resourcegroup, admin_username = _manifest_defaults(
        subscriptionid, resourcegroup, admin_username
    )
    require_given(
        command,
        {
            "--subscriptionid (or a manifest)": subscriptionid,
            "--resourcegroup (or a manifest)": resourcegroup,
            "--admin-username (or a manifest)": admin_username,
            "--location": location,
            "--vnet": vnet,
            "--subnet": subnet,
            "--imagegallery": imagegallery,
            "--imagename": imagename,
            "--skuname": skuname,
        },
    )
    built = _templates.build_sstemplate(
        name,
        subscriptionid=subscriptionid,
        admin_username=admin_username,
        location=location,
        resourcegroup=resourcegroup,
        vnet=vnet,
        subnet=subnet,
        imagegallery=imagegallery,
        imagename=imagename,
        skuname=skuname,
        subscriptionid_image=subscriptionid_image,
        resourcegroup_vnet=resourcegroup_vnet,
        resourcegroup_image=resourcegroup_image,
        skutier=skutier or "Standard",
        osdisksize=_schema.DEFAULT_OSDISK_SIZE_GB if osdisksize is None else osdisksize,
        datadisks=_parse_datadisks(datadisk),
        tempdisk=_schema.DEFAULT_TEMPDISK if tempdisk is None else tempdisk,
        tags=_parse_tags(tag),
        encryption_at_host=encryption_at_host,
    )
    _save("scaleset", name, built)


def template_add_vm(
    name: NameArgument,
    local: Annotated[
        bool, typer.Option("--local", help="A local VM template: a process on this machine.")
    ] = False,
    subscriptionid: SubscriptionOption = None,
    admin_username: Annotated[
        str | None, option("User on the VM (default: manifest ssh_user).")
    ] = (None),
    location: LocationOption = None,
    resourcegroup: ResourceGroupOption = None,
    imagegallery: GalleryOption = None,
    imagename: ImageOption = None,
    vmsize: Annotated[str | None, option("VM size, e.g. Standard_D8s_v3.")] = None,
    nicname: Annotated[str | None, option("Network interface name (default: cbox-nic).")] = None,
    subscriptionid_image: ImageSubscriptionOption = None,
    resourcegroup_vnet: Annotated[
        str | None, option("Resource group of the network interface (default: --resourcegroup).")
    ] = None,
    resourcegroup_image: ImageResourceGroupOption = None,
    osdisksize: OsDiskOption = None,
    datadisk: DatadiskOption = None,
    tempdisk: TempdiskOption = None,
    tag: TagOption = None,
    encryption_at_host: EncryptionOption = False,
) -> None:
    """Add (or replace) a VM template for detached VMs: Azure by default, or --local."""
    command = "azm template add-vm"
    azure_options = {
        "--subscriptionid": subscriptionid,
        "--admin-username": admin_username,
        "--location": location,
        "--resourcegroup": resourcegroup,
        "--imagegallery": imagegallery,
        "--imagename": imagename,
        "--vmsize": vmsize,
        "--nicname": nicname,
        "--subscriptionid-image": subscriptionid_image,
        "--resourcegroup-vnet": resourcegroup_vnet,
        "--resourcegroup-image": resourcegroup_image,
        "--osdisksize": osdisksize,
        "--datadisk": datadisk,
        "--tempdisk": tempdisk,
        "--tag": tag,
        "--encryption-at-host": encryption_at_host,
    }
    if local:
        _refuse_azure_options(command, azure_options)
        _save("vm", name, dict(_templates.LOCAL_VM_TEMPLATE_DEFAULTS))
        return
    subscriptionid, resourcegroup, admin_username = _manifest_defaults(
        subscriptionid, resourcegroup, admin_username
    )
    require_given(
        command,
        {
            "--subscriptionid (or a manifest)": subscriptionid,
            "--resourcegroup (or a manifest)": resourcegroup,
            "--admin-username (or a manifest)": admin_username,
            "--location": location,
            "--imagegallery": imagegallery,
            "--imagename": imagename,
            "--vmsize": vmsize,
        },
    )
    built = _templates.build_vmtemplate(
        name,
        subscriptionid=subscriptionid,
        admin_username=admin_username,
        location=location,
        resourcegroup=resourcegroup,
        imagegallery=imagegallery,
        imagename=imagename,
        vmsize=vmsize,
        nicname=nicname or _schema.DEFAULT_NIC_NAME,
        subscriptionid_image=subscriptionid_image,
        resourcegroup_vnet=resourcegroup_vnet,
        resourcegroup_image=resourcegroup_image,
        osdisksize=_schema.DEFAULT_OSDISK_SIZE_GB if osdisksize is None else osdisksize,
        datadisks=_parse_datadisks(datadisk),
        tempdisk=_schema.DEFAULT_TEMPDISK if tempdisk is None else tempdisk,
        tags=_parse_tags(tag),
        encryption_at_host=encryption_at_host,
    )
    _save("vm", name, built)


def template_add_nic(
    name: NameArgument,
    subscriptionid: Annotated[
        str | None, option("Subscription of the virtual network (default: the manifest's).")
    ] = None,
    resourcegroup_vnet: Annotated[
        str | None, option("Resource group of the virtual network (default: the manifest's).")
    ] = None,
    vnet: Annotated[str | None, option("Virtual network to attach to.")] = None,
    subnet: Annotated[str | None, option("Subnet to attach to.")] = None,
    location: LocationOption = None,
    accelerated: Annotated[
        bool,
        typer.Option(
            "--accelerated/--no-accelerated",
            help="Accelerated networking (not every VM size supports it).",
        ),
    ] = True,
) -> None:
    """Add (or replace) a network interface template for detached VMs."""
    command = "azm template add-nic"
    manifest = _manifest_or_none()
    if manifest is not None:
        subscriptionid = subscriptionid or manifest.subscriptionid
        resourcegroup_vnet = resourcegroup_vnet or manifest.resourcegroup
    require_given(
        command,
        {
            "--subscriptionid (or a manifest)": subscriptionid,
            "--resourcegroup-vnet (or a manifest)": resourcegroup_vnet,
            "--vnet": vnet,
            "--subnet": subnet,
            "--location": location,
        },
    )
    built = _templates.build_nictemplate(
        name,
        subscriptionid=subscriptionid,
        resourcegroup_vnet=resourcegroup_vnet,
        vnet=vnet,
        subnet=subnet,
        location=location,
        accelerated=accelerated,
    )
    _save("nic", name, built)
