"""Stand-alone Azure VMs (detached VMs, head nodes), each with its network interface."""

from __future__ import annotations

import base64
import copy
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any

from azmanagers.errors import ConfigError, NotFoundError, ProviderError
from azmanagers.providers import boot
from azmanagers.providers.azure._clients import ArmSettings, download_tail, network_client
from azmanagers.providers.azure._errors import mapped
from azmanagers.providers.base import Instance, InstanceState, VMInfo, VMSpec

BOOT_LOG_SAS_MINUTES = 5
"""How long the SAS URL of a boot diagnostics log lives (we fetch it at once)."""

_PROVISIONING = {
    "creating": InstanceState.CREATING,
    "updating": InstanceState.RUNNING,
    "succeeded": InstanceState.RUNNING,
    "failed": InstanceState.FAILED,
    "deleting": InstanceState.DELETING,
}
_POWER_STOPPED = {"stopped", "deallocated", "deallocating", "stopping"}


def instance_state(provisioning: str | None, statuses: Sequence[str]) -> InstanceState:
    """Map a VM's provisioning state and instance-view status codes to ours.

    Serves stand-alone VMs and the VMs of a scale set alike.
    """
    state = _PROVISIONING.get((provisioning or "").lower(), InstanceState.CREATING)
    for code in statuses:
        kind, _, rest = code.partition("/")
        value = rest.split("/", 1)[0]
        if kind == "ProvisioningState" and value.lower() == "failed":
            return InstanceState.FAILED
        if (
            kind == "PowerState"
            and value.lower() in _POWER_STOPPED
            and state is InstanceState.RUNNING
        ):
            return InstanceState.STOPPED
    return state


def status_codes(vm: Any) -> list[str]:
    """Return the instance-view status codes of an SDK VM model ([] without a view)."""
    props = vm.properties
    if props is None or props.instance_view is None:
        return []
    return [s.code for s in props.instance_view.statuses or [] if s.code]


def _timestamp(value: Any) -> float:
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def pool_instance(pool: str, vm: Any) -> Instance:
    """Return an SDK VM model of scale set ``pool`` (with its instance view) as an Instance."""
    props = vm.properties
    return Instance(
        pool=pool,
        id=str(vm.name),
        state=instance_state(props.provisioning_state if props else None, status_codes(vm)),
        created_at=_timestamp(props.time_created if props else None),
        tags=dict(vm.tags or {}),
    )


class AzureVMs:
    """Stand-alone VMs in one resource group; the NIC of VM ``<name>`` is ``<name>-nic``.

    Parameters
    ----------
    compute
        The subscription's ComputeManagementClient (shared with the pools).
    settings, subscription, resource_group
        Where the VMs live; the network client is made on first use.
    """

    def __init__(
        self, compute: Any, settings: ArmSettings, subscription: str, resource_group: str
    ) -> None:
        self._compute = compute
        self._settings = settings
        self._subscription = subscription
        self._group = resource_group
        self._network: Any = None

    def _network_client(self) -> Any:
        if self._network is None:
            self._network = network_client(self._settings, self._subscription)
        return self._network

    def create(self, spec: VMSpec) -> VMInfo:
        """Create the VM's network interface, then the VM with the boot script; return it.

        Returns once both exist (the boot script may still be running).
        """
        vm_body = spec.template.get("value")
        if not isinstance(vm_body, Mapping) or not spec.nic_template:
            raise ConfigError(
                f"VM {spec.name}: the azure provider needs a VM template (build_vmtemplate) "
                "and a NIC template (build_nictemplate)."
            )
        nic_name = f"{spec.name}-nic"
        nic_body: dict[str, Any] = copy.deepcopy(dict(spec.nic_template))
        nic_body["tags"] = dict(spec.tags)
        with mapped(f"creating network interface {nic_name}"):
            nic = (
                self._network_client()
                .network_interfaces.begin_create_or_update(self._group, nic_name, nic_body)
                .result()
            )
        body: dict[str, Any] = copy.deepcopy(dict(vm_body))
        body["tags"] = {**dict(body.get("tags") or {}), **dict(spec.tags)}
        props = body.setdefault("properties", {})
        os_profile = props.setdefault("osProfile", {})
        os_profile["computerName"] = spec.name[:15]
        os_profile["customData"] = base64.b64encode(boot.render(spec.boot).encode()).decode()
        _disks_go_with_the_vm(props)
        props["networkProfile"] = {  # the NIC goes with the VM, also when it deletes itself
            "networkInterfaces": [
                {"id": nic.id, "properties": {"primary": True, "deleteOption": "Delete"}}
            ]
        }
        with mapped(f"creating VM {spec.name}"):
            self._compute.virtual_machines.begin_create_or_update(
                self._group, spec.name, body
            ).result()
        info = self.get(spec.name)
        if info is None:
            raise ProviderError(f"VM {spec.name} was created but cannot be found.")
        return info

    def get(self, name: str) -> VMInfo | None:
        """Return the VM with its state and private address, or None when it does not exist."""
        try:
            with mapped(f"reading VM {name}"):
                vm = self._compute.virtual_machines.get(self._group, name, expand="instanceView")
            with mapped(f"reading the network interface of VM {name}"):
                nic = self._network_client().network_interfaces.get(self._group, f"{name}-nic")
        except NotFoundError:
            return None
        props = vm.properties
        configs = nic.ip_configurations or []
        return VMInfo(
            name=name,
            state=instance_state(props.provisioning_state if props else None, status_codes(vm)),
            address=str(configs[0].private_ip_address or "") if configs else "",
            tags=dict(vm.tags or {}),
        )

    def delete(self, name: str) -> None:
        """Delete the VM, then its network interface; returns when both are gone."""
        try:
            with mapped(f"deleting VM {name}"):
                self._compute.virtual_machines.begin_delete(
                    self._group, name, force_deletion=True
                ).result()
        except NotFoundError:
            pass
        try:
            with mapped(f"deleting network interface {name}-nic"):
                self._network_client().network_interfaces.begin_delete(
                    self._group, f"{name}-nic"
                ).result()
        except NotFoundError:
            pass

    def boot_log(self, name: str, tail_bytes: int) -> str:
        """Return the end of the VM's serial console log (boot diagnostics), '' if none."""
        try:
            with mapped(f"reading the boot log of VM {name}"):
                result = self._compute.virtual_machines.retrieve_boot_diagnostics_data(
                    self._group, name, sas_uri_expiration_time_in_minutes=BOOT_LOG_SAS_MINUTES
                )
        except ProviderError:
            return ""
        url = result.serial_console_log_blob_uri
        return download_tail(str(url), tail_bytes, self._settings.ca_file) if url else ""


def _disks_go_with_the_vm(props: dict[str, Any]) -> None:
    """Have Azure delete the VM's OS and data disks with it (``deleteOption: Delete``), also
    when it deletes itself; a template that asks otherwise keeps its choice."""
    storage = props.get("storageProfile")
    if not isinstance(storage, dict):
        return
    os_disk = storage.get("osDisk")
    if isinstance(os_disk, dict):
        os_disk.setdefault("deleteOption", "Delete")
    for disk in storage.get("dataDisks") or []:
        if isinstance(disk, dict):
            disk.setdefault("deleteOption", "Delete")
