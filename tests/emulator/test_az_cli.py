"""The real Azure CLI (.ci/install-az) against the emulator: sign-in, groups, scale sets, VMs."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.resource.resources import ResourceManagementClient

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.emulator.tokens import managed_identity_ids
from azmanagers.providers.azure._credential import StaticTokenCredential

pytestmark = pytest.mark.azcli

REPO = Path(__file__).resolve().parents[2]
LOCATION = "southcentralus"
RG = "azcli"
DOOMED = "azcli-doomed"
CLOUD = "Emulator"
CUSTOM_DATA = base64.b64encode(b"#!/bin/bash\necho booted\n").decode()
AZ_TIMEOUT_S = 120


def az_executable() -> Path:
    """The az that ``.ci/install-az`` installs; skip without it, unless CI is set (fail)."""
    venv = Path(os.environ.get("AZM_AZ_VENV") or REPO / ".venv-az")
    exe = venv / "bin" / "az"
    if exe.is_file():
        return exe
    reason = f"the Azure CLI is not installed in {venv}: run .ci/install-az"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} (CI is set: these tests must run there)")
    pytest.skip(reason)


def az_environment(emu: Emulator, home: Path) -> dict[str, str]:
    """A clean environment: no user's ~/.azure, the emulator's CA, no telemetry, and no
    instance discovery (msal would ask login.microsoftonline.com about the emulator)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "AZURE_CONFIG_DIR": str(home / ".azure"),
        "REQUESTS_CA_BUNDLE": str(emu.server.ca_file),
        "AZURE_CORE_COLLECT_TELEMETRY": "false",
        "AZURE_CORE_NO_COLOR": "true",
        "AZURE_CORE_ONLY_SHOW_ERRORS": "true",
        "AZURE_CORE_INSTANCE_DISCOVERY": "false",
    }


@dataclass
class Az:
    """Runs az commands with one configuration folder."""

    exe: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.exe), *args, "--output", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=AZ_TIMEOUT_S,
            check=False,
        )

    def __call__(self, *args: str) -> Any:
        """Run a command that must succeed; return its JSON output (None when empty)."""
        done = self.run(*args)
        assert done.returncode == 0, f"az {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def sign_in_to(self, emu: Emulator) -> Any:
        """Register the emulator as a cloud, select it, and log in as its service principal."""
        self(
            "cloud", "register", "--name", CLOUD, "--endpoint-resource-manager", emu.server.base_url
        )
        self("cloud", "set", "--name", CLOUD)
        sp = emu.service_principal
        secret, tenant = sp.client_secret, sp.tenant_id
        return self("login", "--service-principal", "-u", sp.client_id, "-p", secret, "-t", tenant)


@dataclass
class World:
    emu: Emulator
    az: Az
    login: Any
    compute: ComputeManagementClient
    network: NetworkManagementClient

    @property
    def sub(self) -> str:
        return self.emu.server.sign_in.subscription_id


def sdk_clients(emu: Emulator) -> tuple[Any, Any, Any]:
    sub, cred = emu.server.sign_in.subscription_id, StaticTokenCredential(emu.server.token)
    options: dict[str, Any] = {"connection_verify": str(emu.server.ca_file), "polling_interval": 0}
    base = emu.server.base_url
    return (
        ResourceManagementClient(cred, sub, base_url=base, **options),
        ComputeManagementClient(cred, sub, base, **options),
        NetworkManagementClient(cred, sub, base_url=base, **options),
    )


def make_subnet(network: Any, group: str) -> str:
    vnet = {
        "location": LOCATION,
        "properties": {
            "addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
            "subnets": [{"name": "default", "properties": {"addressPrefix": "10.0.0.0/24"}}],
        },
    }
    network.virtual_networks.begin_create_or_update(group, "vnet", vnet).result()
    return str(network.subnets.get(group, "vnet", "default").id)


def image_of(subnet: str) -> str:
    """A gallery image in the subnet's group (the emulator checks shapes, not images)."""
    return subnet.split("/providers/")[0] + "/providers/Microsoft.Compute/galleries/g/images/i"


def scaleset_body(capacity: int, subnet: str, tags: dict[str, str]) -> dict[str, Any]:
    nic = {"name": "ip", "properties": {"subnet": {"id": subnet}}}
    return {
        "location": LOCATION,
        "tags": tags,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
        "properties": {
            "overprovision": False,
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "osProfile": {
                    "computerNamePrefix": "azcli",
                    "adminUsername": "azuser",
                    "customData": CUSTOM_DATA,
                    "linuxConfiguration": {"disablePasswordAuthentication": True},
                },
                "storageProfile": {"imageReference": {"id": image_of(subnet)}},
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {"name": "nic", "properties": {"primary": True, "ipConfigurations": [nic]}}
                    ]
                },
            },
        },
    }


def make_vm(
    compute: Any,
    network: Any,
    name: str,
    subnet: str,
    *,
    tags: dict[str, str] | None = None,
    boot_script: str = "",
    identity: bool = False,
) -> None:
    """A VM booted from a gallery image, with a NIC of its own in ``subnet``."""
    nic_body = {
        "location": LOCATION,
        "properties": {
            "ipConfigurations": [{"name": "ip", "properties": {"subnet": {"id": subnet}}}]
        },
    }
    nic = network.network_interfaces.begin_create_or_update(RG, f"{name}-nic", nic_body).result()
    os_profile: dict[str, Any] = {"computerName": name, "adminUsername": "azuser"}
    if boot_script:
        os_profile["customData"] = base64.b64encode(boot_script.encode()).decode()
    body: dict[str, Any] = {
        "location": LOCATION,
        "tags": tags or {},
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
            "storageProfile": {"imageReference": {"id": image_of(subnet)}},
            "osProfile": os_profile,
            "networkProfile": {"networkInterfaces": [{"id": nic.id}]},
        },
    }
    if identity:
        body["identity"] = {"type": "SystemAssigned"}
    compute.virtual_machines.begin_create_or_update(RG, name, body).result()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One emulator (VMs as records), its resources made through the SDK, az signed in."""
    exe = az_executable()
    emu = start_emulator()
    try:
        resources, compute, network = sdk_clients(emu)
        resources.resource_groups.create_or_update(RG, {"location": LOCATION, "tags": {"k": "v"}})
        resources.resource_groups.create_or_update(DOOMED, {"location": LOCATION})
        subnet = make_subnet(network, RG)
        for name, capacity, tags in [
            ("pool", 3, {"team": "az"}),
            ("pool-scale", 2, {"keep": "me"}),
            ("pool-trim", 3, {}),
        ]:
            body = scaleset_body(capacity, subnet, tags)
            compute.virtual_machine_scale_sets.begin_create_or_update(RG, name, body).result()
        doomed = scaleset_body(1, make_subnet(network, DOOMED), {})
        compute.virtual_machine_scale_sets.begin_create_or_update(DOOMED, "doomed", doomed).result()
        make_vm(compute, network, "vm1", subnet, tags={"team": "az"})
        az = Az(exe, az_environment(emu, tmp_path_factory.mktemp("az-home")))
        login = az.sign_in_to(emu)
        yield World(emu, az, login, compute, network)
    finally:
        emu.stop()


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_az_registers_the_emulator_as_a_cloud_and_logs_in(world: World) -> None:
    base = world.emu.server.base_url
    cloud = world.az("cloud", "show", "--name", CLOUD)
    assert cloud["endpoints"]["resourceManager"] == base  # as given; the rest as fetched
    assert cloud["endpoints"]["activeDirectory"] == base + "/"
    assert cloud["endpoints"]["activeDirectoryResourceId"] == base + "/"
    sp = world.emu.service_principal
    [account] = [a for a in world.login if a["id"] == world.sub]
    assert account["tenantId"] == sp.tenant_id and account["isDefault"]
    assert account["user"] == {"name": sp.client_id, "type": "servicePrincipal"}
    token = world.az("account", "get-access-token")
    claims = claims_of(token["accessToken"])
    assert (claims["tid"], claims["oid"], claims["aud"]) == (sp.tenant_id, sp.object_id, base + "/")
    assert token["subscription"] == world.sub
    posted = world.emu.server.calls_matching("POST", f"/{sp.tenant_id}/oauth2/v2.0/token")
    assert [c.status for c in posted] == [200]


def test_a_wrong_secret_fails_az_login_with_entra_ids_error(world: World, tmp_path: Path) -> None:
    az = Az(world.az.exe, az_environment(world.emu, tmp_path))
    az(
        "cloud",
        "register",
        "--name",
        CLOUD,
        "--endpoint-resource-manager",
        world.emu.server.base_url,
    )
    az("cloud", "set", "--name", CLOUD)
    sp = world.emu.service_principal
    wrong = "not-" + sp.client_secret[:8]
    done = az.run(
        "login", "--service-principal", "-u", sp.client_id, "-p", wrong, "--tenant", sp.tenant_id
    )
    assert done.returncode != 0 and "AADSTS7000215" in done.stderr
    assert sp.client_secret not in done.stderr + done.stdout


def test_group_list_show_and_exists(world: World) -> None:
    groups = {g["name"]: g for g in world.az("group", "list")}
    assert {RG, DOOMED} <= set(groups)
    assert groups[RG]["tags"] == {"k": "v"} and groups[RG]["location"] == LOCATION
    shown = world.az("group", "show", "--name", RG)
    assert shown["id"] == f"/subscriptions/{world.sub}/resourceGroups/{RG}"
    assert shown["properties"]["provisioningState"] == "Succeeded"
    assert world.az("group", "exists", "--name", RG) is True
    assert world.az("group", "exists", "--name", "no-such-group") is False


def test_vmss_list_show_instances_and_instance_views(world: World) -> None:
    assert {"pool", "pool-scale", "pool-trim"} <= {s["name"] for s in world.az("vmss", "list")}
    in_group = world.az("vmss", "list", "--resource-group", RG)
    assert {s["name"] for s in in_group} == {"pool", "pool-scale", "pool-trim"}
    pool = world.az("vmss", "show", "-g", RG, "-n", "pool")
    assert pool["sku"]["capacity"] == 3 and pool["tags"] == {"team": "az"}
    assert pool["virtualMachineProfile"]["osProfile"]["computerNamePrefix"] == "azcli"
    assert pool["provisioningState"] == "Succeeded" and pool["uniqueId"]
    instances = world.az("vmss", "list-instances", "-g", RG, "-n", "pool")
    assert sorted(vm["instanceId"] for vm in instances) == ["0", "1", "2"]
    assert all(vm["provisioningState"] == "Succeeded" and vm["vmId"] for vm in instances)
    assert all(vm["sku"]["name"] == "Standard_D2s_v3" for vm in instances)
    view = world.az("vmss", "get-instance-view", "-g", RG, "-n", "pool")
    summary = {s["code"]: s["count"] for s in view["virtualMachine"]["statusesSummary"]}
    assert summary["PowerState/running"] == 3
    first = instances[0]
    member = world.az(
        "vmss", "get-instance-view", "-g", RG, "-n", "pool", "--instance-id", first["instanceId"]
    )
    power = [s for s in member["statuses"] if s["code"].startswith("PowerState/")]
    assert [(s["code"], s["displayStatus"]) for s in power] == [
        ("PowerState/running", "VM running")
    ]
    assert member["computerName"] == first["osProfile"]["computerName"]


def test_vmss_scale_keeps_tags_and_the_vm_profile(world: World) -> None:
    scaled = world.az("vmss", "scale", "-g", RG, "-n", "pool-scale", "--new-capacity", "4")
    assert scaled["sku"]["capacity"] == 4 and scaled["tags"] == {"keep": "me"}
    shown = world.az("vmss", "show", "-g", RG, "-n", "pool-scale")
    assert shown["tags"] == {"keep": "me"}
    with world.emu.state.lock:  # Azure never gives custom data back: the stored model
        [kept] = [s for s in world.emu.state.scalesets.values() if s.name == "pool-scale"]
        profile = kept.body["properties"]["virtualMachineProfile"]
    assert profile["osProfile"]["customData"] == CUSTOM_DATA  # az sent location and sku only
    instances = world.az("vmss", "list-instances", "-g", RG, "-n", "pool-scale")
    assert len(instances) == 4


def test_vmss_delete_instances(world: World) -> None:
    world.az("vmss", "delete-instances", "-g", RG, "-n", "pool-trim", "--instance-ids", "0", "1")
    left = world.az("vmss", "list-instances", "-g", RG, "-n", "pool-trim")
    assert [vm["instanceId"] for vm in left] == ["2"]
    assert world.az("vmss", "show", "-g", RG, "-n", "pool-trim")["sku"]["capacity"] == 1


def test_vm_list_and_show_with_details(world: World) -> None:
    nic = world.network.network_interfaces.get(RG, "vm1-nic")
    address = nic.ip_configurations[0].private_ip_address
    [listed] = [vm for vm in world.az("vm", "list", "-d", "-g", RG) if vm["name"] == "vm1"]
    shown = world.az("vm", "show", "-d", "-g", RG, "-n", "vm1")
    for vm in (listed, shown):
        assert vm["powerState"] == "VM running"
        assert vm["privateIps"] == address and vm["publicIps"] == ""
        assert vm["storageProfile"]["osDisk"]["osType"] == "Linux"
        assert vm["vmId"] and vm["tags"] == {"team": "az"}


def test_vm_list_skus_in_a_location(world: World) -> None:
    skus = world.az("vm", "list-skus", "-l", LOCATION, "--size", "Standard_D2s_v3")
    assert [s["name"] for s in skus] == ["Standard_D2s_v3"]
    [info] = skus[0]["locationInfo"]
    assert info["location"].lower() == LOCATION


def test_resource_list_by_tag(world: World) -> None:
    found = world.az("resource", "list", "--tag", "team=az")
    assert {(r["type"], r["name"]) for r in found} == {
        ("Microsoft.Compute/virtualMachineScaleSets", "pool"),
        ("Microsoft.Compute/virtualMachines", "vm1"),
    }


def test_group_delete_deletes_what_the_group_holds(world: World) -> None:
    world.az("group", "delete", "--name", DOOMED, "--yes")
    assert world.az("group", "exists", "--name", DOOMED) is False
    assert "doomed" not in {s["name"] for s in world.az("vmss", "list")}
    assert world.az("group", "exists", "--name", RG) is True


IDENTITY_SCRIPT = """#!/bin/bash
unset PYTHONPATH
export AZURE_POD_IDENTITY_AUTHORITY_HOST="$AZMANAGERS_IMDS_ENDPOINT"
export REQUESTS_CA_BUNDLE="$AZMANAGERS_ARM_CA" AZURE_CORE_COLLECT_TELEMETRY=false
export AZURE_CORE_NO_COLOR=true AZURE_CORE_ONLY_SHOW_ERRORS=true AZURE_CORE_INSTANCE_DISCOVERY=false
az={az}
$az cloud register -n Emulator --endpoint-resource-manager "$AZMANAGERS_ARM_ENDPOINT" &&
$az cloud set -n Emulator && $az login --identity -o json > "$HOME/login.json" &&
$az account get-access-token --query accessToken -o tsv > "$HOME/token.txt"
echo $? > "$HOME/done.tmp" && mv "$HOME/done.tmp" "$HOME/done.txt"  # whole, or not there
"""


def wait_for(path: Path, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    return path.read_text()


def test_a_vm_logs_in_with_its_managed_identity(tmp_path: Path) -> None:
    exe = az_executable()
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    try:
        resources, compute, network = sdk_clients(emu)
        resources.resource_groups.create_or_update(RG, {"location": LOCATION})
        subnet = make_subnet(network, RG)
        script = IDENTITY_SCRIPT.format(az=exe)
        make_vm(compute, network, "idvm", subnet, boot_script=script, identity=True)
        (home,) = (tmp_path / "emulator" / "vms").glob("idvm-*")  # its name and its vmId
        status = wait_for(home / "done.txt").strip()
        assert status == "0", (home / "boot.log").read_text()[-3000:]
        [account] = json.loads((home / "login.json").read_text())
        assert account["id"] == emu.server.sign_in.subscription_id
        assert account["user"]["name"] == "systemAssignedIdentity"
        assert account["user"]["type"] == "servicePrincipal"
        claims = claims_of((home / "token.txt").read_text().strip())
        assert claims["tid"] == emu.service_principal.tenant_id
        assert claims["xms_mirid"].endswith("/providers/Microsoft.Compute/virtualMachines/idvm")
        vm = compute.virtual_machines.get(RG, "idvm")
        assert claims["oid"] == managed_identity_ids(vm.vm_id)[0]
        assert vm.identity.principal_id == claims["oid"]  # what Azure shows on the VM
    finally:
        emu.stop()
