"""Stand-alone VMs with their network interfaces, from the VM and NIC templates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import azmanagers
from azmanagers.emulator import Emulator, start_emulator
from azmanagers.errors import ConfigError
from azmanagers.providers.azure._clients import ArmSettings, resource_client
from azmanagers.providers.azure.provider import AzureProvider
from azmanagers.providers.base import BootSpec, InstanceState, VMSpec
from azmanagers.providers.tags import owner_id, resource_tags
from tests.conftest import HAS_AZMANAGERS, processes_under

SUB = "00000000-0000-0000-0000-0000000000dd"
RG = "azm-vms"


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    for key, value in emu.environment().items():
        monkeypatch.setenv(key, value)
    resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
        RG, {"location": "southcentralus"}
    )
    yield emu
    emu.stop()
    assert processes_under(tmp_path / "emulator") == []


def vm_spec(name: str, recorder: Path) -> VMSpec:
    vm = azmanagers.build_vmtemplate(
        "myvm",
        subscriptionid=SUB,
        admin_username="azuser",
        location="southcentralus",
        resourcegroup=RG,
        imagegallery="gallery",
        imagename="image",
        vmsize="Standard_D4s_v3",
    )
    nic = azmanagers.build_nictemplate(
        "mynic",
        subscriptionid=SUB,
        resourcegroup_vnet=RG,
        vnet="vnet",
        subnet="subnet",
        location="southcentralus",
    )
    return VMSpec(
        name=name,
        boot=BootSpec(role="detached", payload={}, env={"AZMANAGERS_PYTHON": str(recorder)}),
        tags=resource_tags(name, owner_id(), 3600),
        template=vm,
        nic_template=nic,
    )


def test_a_vm_with_its_nic_boots_and_is_deleted_with_it(emulator: Emulator, tmp_path: Path) -> None:
    recorder = tmp_path / "recorder"
    recorder.write_text(
        "#!/bin/bash\n" + HAS_AZMANAGERS + 'curl_out=$(python3 -c "import json,urllib.request as u;'
        "r=u.Request('$AZMANAGERS_IMDS_ENDPOINT/metadata/instance?api-version=2021-02-01',"
        "headers={'Metadata':'true'});print(json.load(u.urlopen(r))['compute']['name'])\")\n"
        'echo "booted as $curl_out with $*"\nexec sleep 600\n'
    )
    recorder.chmod(0o755)
    provider = AzureProvider(SUB, RG)
    info = provider.create_vm(vm_spec("detached1", recorder))
    # the VM made its OS disk, a managed disk it holds
    ((disk_key, disk),) = emulator.state.others.items()
    assert disk_key[2] == "microsoft.compute/disks" and disk["managedBy"].endswith("/detached1")
    assert info.name == "detached1" and info.state is InstanceState.RUNNING
    assert info.address.startswith("127.") and ".10." in info.address  # a process-VM: loopback
    (vm_folder,) = (tmp_path / "emulator" / "vms").glob("detached1-*")  # its name, its vmId
    log = vm_folder / "boot.log"
    deadline = time.monotonic() + 20
    while "booted as detached1 with -m azmanagers.agent detached" not in (
        log.read_text() if log.exists() else ""
    ):
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no boot log"
        time.sleep(0.1)
    kinds = {(r.kind, r.name) for r in provider.list_owned_resources(cluster="detached1")}
    assert kinds == {("vm", "detached1")}
    # its instance view, as `az vm get-instance-view` reads it
    from azure.mgmt.compute import ComputeManagementClient

    from azmanagers.providers.azure._credential import StaticTokenCredential

    server = emulator.server
    compute = ComputeManagementClient(
        StaticTokenCredential(server.token),
        SUB,
        server.base_url,
        connection_verify=str(server.ca_file),
    )
    view = compute.virtual_machines.instance_view(RG, "detached1")
    by_code = {s.code: s for s in view.statuses}
    assert by_code["PowerState/running"].display_status == "VM running"
    assert by_code["ProvisioningState/succeeded"].time is not None
    provider.delete_vm("detached1")
    assert provider.get_vm("detached1") is None
    assert emulator.state.vms == {} and emulator.state.nics == {}
    assert emulator.state.others == {}  # its OS disk (deleteOption Delete) went with it
    provider.delete_vm("detached1")  # repeating is safe


def test_a_vm_needs_both_templates(emulator: Emulator, tmp_path: Path) -> None:
    del emulator
    spec = vm_spec("x", tmp_path / "nothing")
    with pytest.raises(ConfigError, match="NIC template"):
        AzureProvider(SUB, RG).create_vm(
            VMSpec(name="x", boot=spec.boot, tags=spec.tags, template=spec.template)
        )
