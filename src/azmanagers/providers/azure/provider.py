"""The azure provider: a pool is a VM scale set; instances are its VMs."""

from __future__ import annotations

import base64
import copy
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from azmanagers.errors import ConfigError, NotFoundError, ProviderError, QuotaError
from azmanagers.providers import boot
from azmanagers.providers.azure import flexible
from azmanagers.providers.azure._clients import (
    ArmSettings,
    compute_client,
    download_tail,
    resource_client,
)
from azmanagers.providers.azure._errors import mapped
from azmanagers.providers.azure.vms import (
    BOOT_LOG_SAS_MINUTES,
    AzureVMs,
    pool_instance,
)
from azmanagers.providers.base import (
    REGULAR,
    Instance,
    OwnedResource,
    Pace,
    PoolSpec,
    Priority,
    UnreadableResource,
    VMInfo,
    VMSpec,
)
from azmanagers.providers.tags import TAG_CLUSTER, TAG_OWNER, owner_alive

VMSS_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
VM_TYPE = "Microsoft.Compute/virtualMachines"


class AzureProvider:
    """VM scale sets in one subscription and resource group, through the Azure SDKs.

    Calls that change capacity send one request and return without waiting for the
    operation (the reconciler watches the result); listing is one paged call per pool.
    A regular/spot mix makes the scale set Flexible (see ``flexible``); the provider
    remembers each pool's mode, reading it once for a pool it did not create.

    Parameters
    ----------
    subscription, resource_group
        Where the scale sets live.
    settings
        ARM endpoint, CA bundle and credential (by default from the environment).
    """

    name = "azure"
    pace = Pace(steady_s=10.0, after_change_s=2.0, change_window_s=60.0)
    """ARM allows a subscription about 12,000 reads an hour: a steady pool costs 360."""

    def __init__(
        self, subscription: str, resource_group: str, settings: ArmSettings | None = None
    ) -> None:
        if not subscription or not resource_group:
            raise ConfigError(
                "the azure provider needs a subscription and a resource group: set them in "
                "the template or with azmanagers.write_manifest(...)."
            )
        self.subscription = subscription
        self.resource_group = resource_group
        self.settings = settings or ArmSettings.from_environment()
        self._compute = compute_client(self.settings, subscription)
        self._resources: Any = None
        self._skus: dict[tuple[str, str], tuple[str, int]] = {}
        self._flexible: dict[str, bool] = {}
        self.vms = AzureVMs(self._compute, self.settings, subscription, resource_group)
        """The stand-alone VMs and their NICs (``azure/vms.py``)."""

    def check_reachable(self, host: str) -> None:
        """Refuse a loopback ``host`` unless ARM itself is on loopback (the emulator)."""
        endpoint_host = urllib.parse.urlsplit(self.settings.endpoint).hostname or ""
        on_loopback = endpoint_host in ("127.0.0.1", "localhost", "::1")
        if host in ("127.0.0.1", "localhost", "::1") and not on_loopback:
            raise ConfigError(
                "the scheduler would listen on loopback, which Azure VMs cannot reach: pass "
                "scheduler_host='<this machine's address in the VMs' virtual network>' (or set "
                "AZMANAGERS_SCHEDULER_HOST), and run from a machine in that network."
            )

    # -- pools ---------------------------------------------------------------------------
    def create_pool(self, spec: PoolSpec) -> None:
        """Create the scale set (capacity 0) with the boot script as custom data."""
        try:
            with mapped(f"looking up scale set {spec.name}"):
                found = self._compute.virtual_machine_scale_sets.get(self.resource_group, spec.name)
            self._flexible[spec.name] = flexible.is_flexible(found.orchestration_mode)
            return  # it exists: creating is idempotent
        except NotFoundError:
            pass
        body = self._scaleset_body(spec)
        with mapped(f"creating scale set {spec.name}"):
            self._compute.virtual_machine_scale_sets.begin_create_or_update(
                self.resource_group, spec.name, body
            ).result()
        self._flexible[spec.name] = spec.priority.mixed

    def _is_flexible(self, pool: str) -> bool:
        """Whether the pool is a Flexible scale set (read once for a pool made elsewhere)."""
        if pool not in self._flexible:
            with mapped(f"looking up scale set {pool}"):
                found = self._compute.virtual_machine_scale_sets.get(self.resource_group, pool)
            self._flexible[pool] = flexible.is_flexible(found.orchestration_mode)
        return self._flexible[pool]

    def _scaleset_body(self, spec: PoolSpec) -> dict[str, Any]:
        template = spec.template.get("value") if isinstance(spec.template, Mapping) else None
        if not isinstance(template, Mapping):
            raise ConfigError(
                f"pool {spec.name}: the azure provider needs a scale-set template (the 'value' "
                "of a template from build_sstemplate)."
            )
        body: dict[str, Any] = copy.deepcopy(dict(template))
        body.setdefault("sku", {})["capacity"] = 0
        body["tags"] = {**dict(body.get("tags") or {}), **dict(spec.tags)}
        profile = body.setdefault("properties", {}).setdefault("virtualMachineProfile", {})
        os_profile = profile.setdefault("osProfile", {})
        os_profile["customData"] = base64.b64encode(boot.render(spec.boot).encode()).decode()
        os_profile.setdefault("computerNamePrefix", spec.name[:9])
        if spec.priority.spot:
            profile["priority"] = "Spot"
            profile["evictionPolicy"] = "Delete"
            profile["billingProfile"] = {"maxPrice": spec.priority.max_price}
        if spec.priority.mixed:
            flexible.make_flexible(body, spec.priority)
        return body

    def set_pool_tags(self, pool: str, tags: Mapping[str, str]) -> None:
        """Replace the scale set's tags (renews ``azmanagers-expires``)."""
        with mapped(f"tagging scale set {pool}"):
            self._compute.virtual_machine_scale_sets.begin_update(
                self.resource_group, pool, {"tags": dict(tags)}, polling=False
            )

    def scale_pool(self, pool: str, capacity: int) -> None:
        """Set the capacity with one PATCH (never a whole-template PUT); returns at once."""
        with mapped(f"scaling scale set {pool} to {capacity}"):
            self._compute.virtual_machine_scale_sets.begin_update(
                self.resource_group, pool, {"sku": {"capacity": capacity}}, polling=False
            )

    def delete_instances(self, pool: str, instance_ids: Sequence[str]) -> None:
        """Delete these VMs (by name) in one batched call; returns at once.

        A Uniform scale set names its instances by number, a Flexible one by VM name.
        """
        names = sorted({_check_instance_name(pool, name) for name in instance_ids})
        if not names:
            return
        by_name = self._is_flexible(pool)
        ids = names if by_name else sorted((_instance_number(pool, n) for n in names), key=int)
        try:
            self._delete_ids(pool, ids)
        except NotFoundError:
            # Some are gone already (repeating a delete is safe): delete those that remain.
            remaining = {i.id for i in self.list_instances(pool)}
            left = [i for i in ids if (i if by_name else f"{pool}_{i}") in remaining]
            if left:
                self._delete_ids(pool, left)

    def _delete_ids(self, pool: str, ids: list[str]) -> None:
        with mapped(f"deleting {len(ids)} instances of scale set {pool}"):
            self._compute.virtual_machine_scale_sets.begin_delete_instances(
                self.resource_group,
                pool,
                {"instanceIds": ids},
                force_deletion=True,
                polling=False,
            )

    def list_instances(self, pool: str) -> list[Instance]:
        """Return the scale set's VMs with their instance view: one paged call."""
        try:
            flex = self._is_flexible(pool)
            with mapped(f"listing the instances of scale set {pool}"):
                if flex:
                    found = self._compute.virtual_machines.list(
                        self.resource_group,
                        filter=flexible.vm_filter(self.subscription, self.resource_group, pool),
                        expand="instanceView",
                    )
                else:
                    found = self._compute.virtual_machine_scale_set_vms.list(
                        self.resource_group, pool, expand="instanceView"
                    )
                vms = list(found)
        except NotFoundError:
            return []
        return [pool_instance(pool, vm) for vm in vms]

    def delete_pool(self, pool: str, *, wait: bool = True) -> None:
        """Delete the scale set with its VMs (force deletion); with ``wait``, until gone."""
        try:
            with mapped(f"deleting scale set {pool}"):
                poller = self._compute.virtual_machine_scale_sets.begin_delete(
                    self.resource_group, pool, force_deletion=True, polling=wait
                )
                if wait:
                    poller.result()
        except NotFoundError:
            pass
        self._flexible.pop(pool, None)

    def instance_log(self, pool: str, instance_id: str, *, tail_bytes: int = 4096) -> str:
        """Return the end of the VM's serial console log (boot diagnostics), '' if none.

        Needs boot diagnostics on the scale set (the templates turn it on with managed
        storage). The log is fetched from its short-lived SAS URL, with no bearer token.
        """
        try:
            name = _check_instance_name(pool, instance_id)
            with mapped(f"reading the boot log of {instance_id}"):
                if self._is_flexible(pool):
                    result = self._compute.virtual_machines.retrieve_boot_diagnostics_data(
                        self.resource_group,
                        name,
                        sas_uri_expiration_time_in_minutes=BOOT_LOG_SAS_MINUTES,
                    )
                else:
                    vms = self._compute.virtual_machine_scale_set_vms
                    result = vms.retrieve_boot_diagnostics_data(
                        self.resource_group,
                        pool,
                        _instance_number(pool, name),
                        sas_uri_expiration_time_in_minutes=BOOT_LOG_SAS_MINUTES,
                    )
        except (ConfigError, ProviderError):
            return ""
        url = result.serial_console_log_blob_uri
        return download_tail(str(url), tail_bytes, self.settings.ca_file) if url else ""

    # -- stand-alone VMs (azure/vms.py) -------------------------------------------------
    def create_vm(self, spec: VMSpec) -> VMInfo:
        """Create the VM's network interface, then the VM; return once both exist."""
        return self.vms.create(spec)

    def get_vm(self, name: str) -> VMInfo | None:
        """Return the VM with its state and private address, or None when it does not exist."""
        return self.vms.get(name)

    def delete_vm(self, name: str) -> None:
        """Delete the VM, then its network interface; returns when both are gone."""
        self.vms.delete(name)

    def vm_log(self, name: str, *, tail_bytes: int = 4096) -> str:
        """Return the end of the VM's serial console log (boot diagnostics), '' if none."""
        return self.vms.boot_log(name, tail_bytes)

    # -- quota -------------------------------------------------------------------------
    def check_capacity(
        self,
        template: Mapping[str, Any],
        add: int,
        *,
        current: int = 0,
        priority: Priority = REGULAR,
    ) -> None:
        """Raise QuotaError at once when ``add`` more VMs would not fit the quota.

        Looks up the VM size's family and vCPUs (once per size) and the region's usages
        (one call). Regular VMs count against the family's and the region's vCPUs, spot
        VMs against the region's spot vCPUs; a mix splits ``add`` between them.
        """
        if add <= 0:
            return
        value = template.get("value") if isinstance(template, Mapping) else None
        if not isinstance(value, Mapping):
            return
        sku_name = str((value.get("sku") or {}).get("name") or "")
        location = str(value.get("location") or "")
        if not sku_name or not location:
            return
        family, vcpus = self._sku(location, sku_name)
        with mapped(f"reading the quota usages of {location}"):
            usages = {str(u.name.value): u for u in self._compute.usage.list(location)}
        regular, spot = flexible.split(priority, current, add)
        checks = [
            (family, f"family {family}", regular, "regular"),
            ("cores", "the region's vCPUs", regular, "regular"),
            (flexible.SPOT_QUOTA, "the region's spot vCPUs", spot, "spot"),
        ]
        for key, label, count, kind in checks:
            usage = usages.get(key)
            if usage is None or count <= 0:
                continue
            need, free = count * vcpus, int(usage.limit) - int(usage.current_value)
            if need > free:
                raise QuotaError(
                    f"not enough quota in {location} for {count} {kind} x {sku_name}: {label} "
                    f"needs {need} vCPUs but {max(free, 0)} of {usage.limit} are free "
                    f"({usage.current_value} in use). Ask for more quota (Azure portal: "
                    "Subscriptions > Usage + quotas), pick another VM size, or add fewer "
                    "workers."
                )

    def _sku(self, location: str, sku_name: str) -> tuple[str, int]:
        key = (location.lower(), sku_name.lower())
        if key not in self._skus:
            with mapped(f"looking up VM size {sku_name} in {location}"):
                found = list(self._compute.resource_skus.list(filter=f"location eq '{location}'"))
            for sku in found:
                if sku.resource_type == "virtualMachines" and str(sku.name).lower() == key[1]:
                    caps = {c.name: c.value for c in sku.capabilities or []}
                    self._skus[key] = (str(sku.family), int(caps.get("vCPUs", "1")))
                    break
            else:
                raise ConfigError(
                    f"VM size {sku_name} is not offered in {location}; pick another skuname "
                    "in the template (az vm list-skus --location LOCATION)."
                )
        return self._skus[key]

    # -- ownership -----------------------------------------------------------------------
    def list_owned_resources(self, *, cluster: str | None = None) -> list[OwnedResource]:
        """Return our scale sets and VMs, found by the exact ``azmanagers-cluster`` tag.

        One unfiltered list of the resource group, matched here: ARM leaves the tags out of
        the answer when it filters by tag name and value, and a tag filter cannot be combined
        with a type filter, so a server-side filter would hide the tags we match on.
        """
        if self._resources is None:
            self._resources = resource_client(self.settings, self.subscription)
        with mapped(f"listing resources tagged {TAG_CLUSTER}"):
            found = list(self._resources.resources.list_by_resource_group(self.resource_group))
        out = []
        for res in found:
            tags = dict(res.tags or {})
            kind = {VMSS_TYPE: "scaleset", VM_TYPE: "vm"}.get(str(res.type))
            if kind is None or TAG_CLUSTER not in tags or TAG_OWNER not in tags:
                continue
            if cluster is not None and tags[TAG_CLUSTER] != cluster:
                continue  # exact match
            out.append(
                OwnedResource(
                    kind=kind,
                    name=str(res.name),
                    tags=tags,
                    owner_alive=owner_alive(tags[TAG_OWNER]),
                )
            )
        return out

    def list_unreadable_resources(self) -> list[UnreadableResource]:
        """Return [] : ARM hands out typed resources, so none is ever skipped as unreadable."""
        return []

    def delete_owned_resource(self, resource: OwnedResource) -> None:
        """Delete a scale set or VM found by ``list_owned_resources``; returns when gone."""
        if resource.kind == "vm":
            self.delete_vm(resource.name)
        else:
            self.delete_pool(resource.name, wait=True)


def _check_instance_name(pool: str, name: str) -> str:
    """Return ``name`` if it names a VM of scale set ``pool`` (``<pool>_<suffix>``)."""
    suffix = name[len(pool) + 1 :] if name.startswith(f"{pool}_") else ""
    if not suffix.isalnum() or not suffix.isascii():
        raise ConfigError(f"{name!r} is not an instance of scale set {pool!r}.")
    return name


def _instance_number(pool: str, name: str) -> str:
    """Return a Uniform scale set's instance number from the VM name ``<pool>_<number>``."""
    number = _check_instance_name(pool, name)[len(pool) + 1 :]
    if not number.isdigit():
        raise ConfigError(f"{name!r} is not an instance of the Uniform scale set {pool!r}.")
    return number
