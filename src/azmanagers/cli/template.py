"""The ``azm template`` commands: list, show, add and remove templates."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from azmanagers.cli.options import option, require_given
from azmanagers.config import manifest as _manifest
from azmanagers.config import template_schema as _schema
from azmanagers.config import templates as _templates
from azmanagers.config.paths import home
from azmanagers.errors import ConfigError

template_app = typer.Typer(
    name="template",
    help="List, show, add and remove scale-set, VM and NIC templates.",
    no_args_is_help=True,
    add_completion=False,
)

KindOption = Annotated[
    str, typer.Option("--kind", "-k", help="Template kind: scaleset, vm or nic.")
]
NameArgument = Annotated[
    str, typer.Argument(help="Template name: letters, digits, '-' and '_'.", show_default=False)
]
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", help="An ARM tag KEY=VALUE; repeat for more.", show_default=False),
]
DatadiskOption = Annotated[
    list[str] | None,
    typer.Option(
        "--datadisk",
        help=(
            "A data disk SIZE_GB[:STORAGE_TYPE], e.g. 1023 or 512:UltraSSD_LRS; repeat for "
            "more (luns 1, 2, ...). Default type Premium_LRS."
        ),
        show_default=False,
    ),
]


# Options that add-scaleset and add-vm share.
SubscriptionOption = Annotated[
    str | None, option("Azure subscription id (default: the manifest's).")
]
LocationOption = Annotated[str | None, option("Azure region, e.g. southcentralus.")]
ResourceGroupOption = Annotated[str | None, option("Resource group (default: the manifest's).")]
GalleryOption = Annotated[str | None, option("Azure compute gallery holding the image.")]
ImageOption = Annotated[str | None, option("Image in the gallery.")]
ImageSubscriptionOption = Annotated[
    str | None, option("Subscription of the gallery (default: --subscriptionid).")
]
ImageResourceGroupOption = Annotated[
    str | None, option("Resource group of the gallery (default: --resourcegroup).")
]
OsDiskOption = Annotated[int | None, option("OS disk size in GB (default: 60).")]
TempdiskOption = Annotated[
    str | None, option("Shell commands preparing the temporary disk (default: /scratch link).")
]
EncryptionOption = Annotated[
    bool, typer.Option("--encryption-at-host", help="Enable encryption at host.")
]


# ---------------------------------------------------------------------------------------------
# azm manifest
# ---------------------------------------------------------------------------------------------


def _manifest_or_none() -> _manifest.Manifest | None:
    """Return the manifest if there is one, else None (a corrupt one still raises)."""
    if not _manifest.manifest_path().exists():
        return None
    return _manifest.load_manifest()


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


def _saved_message(kind: str, name: str, existed: bool, path: Any) -> str:
    """Return the success message of a save."""
    note = " (replaced the previous one)" if existed else ""
    return f"Saved {kind} template {name!r} to {path}{note}."


def _save(kind: str, name: str, template: dict[str, Any]) -> None:
    """Save a template of ``kind`` and print where it went."""
    existed = name in _templates.stored_template_names(kind)
    if kind == "scaleset":
        path = _templates.save_template_scaleset(name, template)
    elif kind == "vm":
        path = _templates.save_template_vm(name, template)
    else:
        path = _templates.save_template_nic(name, template)
    typer.echo(_saved_message(kind, name, existed, path))


def _summary(kind: str, template: Any) -> tuple[str, str]:
    """Return (provider, one-line summary) of a template for ``azm template list``."""
    if not isinstance(template, dict):
        return "?", "not a JSON object (run `azm template show` for the error)"
    if kind == "nic":
        subnet = ""
        try:
            subnet_id = template["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"]
            subnet = f", subnet {str(subnet_id).rsplit('/', 1)[-1]}"
        except (KeyError, IndexError, TypeError):
            pass
        return "azure", f"{template.get('location', '?')}{subnet}"
    provider = str(template.get("provider", _schema.PROVIDER_AZURE))
    if provider == _schema.PROVIDER_LOCAL:
        if kind == "vm":
            return provider, "a process on this machine"
        return provider, (
            f"max_instances {template.get('max_instances')}, "
            f"nthreads {template.get('nthreads')}, memory {template.get('memory_limit')}"
        )
    value = template.get("value")
    value = value if isinstance(value, dict) else {}
    location = value.get("location", "?")
    try:
        if kind == "scaleset":
            size = value["sku"]["name"]
        else:
            size = value["properties"]["hardwareProfile"]["vmSize"]
    except (KeyError, TypeError):
        size = "?"
    return provider, f"{location}, {size}"


def _kinds(kind: str | None) -> list[str]:
    """Return the kinds to list: one (checked), or all."""
    if kind is None:
        return list(_schema.KINDS)
    _templates.templates_path(kind)  # raises ConfigError for an unknown kind
    return [kind]


# ---------------------------------------------------------------------------------------------
# azm template
# ---------------------------------------------------------------------------------------------


@template_app.command("list")
def template_list(
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind", "-k", help="Only this kind: scaleset, vm or nic.", show_default=False
        ),
    ] = None,
) -> None:
    """List templates (built-in ones too) with their provider, location and size."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Templates in {home()}")
    table.add_column("kind")
    table.add_column("name", overflow="fold")
    table.add_column("provider")
    table.add_column("source")
    table.add_column("summary", overflow="fold")
    for one_kind in _kinds(kind):
        stored = set(_templates.stored_template_names(one_kind))
        for name, template in _templates.list_templates(one_kind).items():
            provider, summary = _summary(one_kind, template)
            source = "file" if name in stored else "built-in"
            table.add_row(one_kind, name, provider, source, summary)
    Console().print(table)


@template_app.command("show")
def template_show(name: NameArgument, kind: KindOption = "scaleset") -> None:
    """Print a template as JSON (validated; local templates with every key filled in)."""
    typer.echo(json.dumps(_templates.load_template(kind, name), indent=2))


@template_app.command("remove")
def template_remove(name: NameArgument, kind: KindOption = "scaleset") -> None:
    """Remove a stored template (removing an override of 'local' restores the built-in)."""
    path = _templates.remove_template(kind, name)
    typer.echo(f"Removed {kind} template {name!r} from {path}.")


@template_app.command("add-scaleset")
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
        wrong = _given(azure_options)
        if wrong:
            raise ConfigError(
                f"{command} --local takes no Azure options, got {', '.join(wrong)}. "
                "Drop them, or drop --local for an Azure template."
            )
        template: dict[str, Any] = {"provider": _schema.PROVIDER_LOCAL}
        template.update({key: value for key, value in local_values.items() if value is not None})
        _save("scaleset", name, template)
        return
    wrong = [f"--{key.replace('_', '-')}" for key in _given(local_values)]
    if wrong:
        raise ConfigError(
            f"{', '.join(wrong)} only apply to local templates. Add --local, or drop them."
        )
    manifest = _manifest_or_none()
    if manifest is not None:
        subscriptionid = subscriptionid or manifest.subscriptionid
        resourcegroup = resourcegroup or manifest.resourcegroup
        admin_username = admin_username or manifest.ssh_user
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


@template_app.command("add-vm")
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
        wrong = _given(azure_options)
        if wrong:
            raise ConfigError(
                f"{command} --local takes no Azure options, got {', '.join(wrong)}. "
                "Drop them, or drop --local for an Azure template."
            )
        _save("vm", name, dict(_templates.LOCAL_VM_TEMPLATE_DEFAULTS))
        return
    manifest = _manifest_or_none()
    if manifest is not None:
        subscriptionid = subscriptionid or manifest.subscriptionid
        resourcegroup = resourcegroup or manifest.resourcegroup
        admin_username = admin_username or manifest.ssh_user
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


@template_app.command("add-nic")
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
