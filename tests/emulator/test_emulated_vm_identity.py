"""Each emulated VM is itself: same names in two groups, re-PUTs, secrets, deleted groups."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from azmanagers.emulator import Emulator, start_emulator
from azmanagers.emulator.instances import ProcessRunner
from azmanagers.providers.azure._clients import ArmSettings, compute_client, resource_client
from tests.conftest import eventually, processes_under

SUB = "00000000-0000-0000-0000-0000000000ee"
LOCATION = "southcentralus"
API = "api-version=2024-03-01"
SLEEPER = "#!/bin/bash\nexec sleep 600\n"


def _encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _group(rg: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{rg}"


def _vm_path(rg: str, name: str) -> str:
    return f"{_group(rg)}/providers/Microsoft.Compute/virtualMachines/{name}"


def _nic_path(rg: str, name: str) -> str:
    return f"{_group(rg)}/providers/Microsoft.Network/networkInterfaces/{name}"


def _raw(emu: Emulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTPS request with the emulator's token: (status, JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    separator = "&" if "?" in path else "?"
    request = urllib.request.Request(
        f"{emu.server.base_url}{path}{separator}{API}", data=data, method=method
    )
    request.add_header("Authorization", f"Bearer {emu.server.token}")
    request.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            payload = reply.read()
            return reply.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as err:
        payload = err.read()
        return err.code, json.loads(payload) if payload else None


def _nic_body() -> dict[str, Any]:
    return {"location": LOCATION, "properties": {"ipConfigurations": [{"name": "ip0"}]}}


def _vm_body(rg: str, nic: str, script: str = SLEEPER) -> dict[str, Any]:
    return {
        "location": LOCATION,
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
            "osProfile": {
                "computerName": "host",
                "adminUsername": "azuser",
                "adminPassword": "never-returned-1!",
                "customData": _encoded(script),
            },
            "userData": _encoded("user-data-on-asking"),
            "storageProfile": {
                "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "1"}
            },
            "networkProfile": {"networkInterfaces": [{"id": _nic_path(rg, nic)}]},
        },
    }


def _scaleset_body(script: str) -> dict[str, Any]:
    return {
        "location": LOCATION,
        "sku": {"name": "Standard_D2s_v3", "capacity": 1},
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "storageProfile": {
                    "imageReference": {"publisher": "p", "offer": "o", "sku": "s", "version": "1"}
                },
                "osProfile": {
                    "computerNamePrefix": "node",
                    "adminUsername": "azuser",
                    "customData": _encoded(script),
                },
                "networkProfile": {
                    "networkInterfaceConfigurations": [
                        {"name": "nic0", "properties": {"ipConfigurations": [{"name": "ip0"}]}}
                    ]
                },
            },
        },
    }


def _make_vm(emu: Emulator, rg: str, name: str, script: str = SLEEPER) -> dict[str, Any]:
    """A group (if new), a NIC and a VM on it; the PUT's answer."""
    assert _raw(emu, "PUT", _group(rg), {"location": LOCATION})[0] in (200, 201)
    assert _raw(emu, "PUT", _nic_path(rg, f"{name}-nic"), _nic_body())[0] in (200, 201)
    status, answer = _raw(emu, "PUT", _vm_path(rg, name), _vm_body(rg, f"{name}-nic", script))
    assert status in (200, 201), answer
    return dict(answer)


def _runner(emu: Emulator) -> ProcessRunner:
    assert emu.state.runner is not None
    return emu.state.runner


@pytest.fixture
def records() -> Iterator[Emulator]:
    """An emulator whose VMs are records only."""
    emu = start_emulator()
    yield emu
    emu.stop()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Emulator]:
    """An emulator whose VMs run as process-VMs under ``tmp_path / "emulator"``."""
    emu = start_emulator(run_instances=True, folder=tmp_path / "emulator")
    yield emu
    emu.stop()


def _compute(emu: Emulator) -> Any:
    """The real SDK's compute client on the emulator."""
    env = emu.environment()
    settings = ArmSettings(
        env["AZMANAGERS_ARM_ENDPOINT"], env["AZMANAGERS_ARM_CA"], env["AZMANAGERS_ARM_TOKEN"], 0
    )
    return compute_client(settings, SUB)


def _blob(emu: Emulator, url: str) -> str:
    """A boot-log blob's text (its URL's signature is the credential)."""
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    with urllib.request.urlopen(url, context=context, timeout=10) as reply:
        return str(reply.read().decode())


def _folders(emu: Emulator, rg: str) -> list[Path]:
    """The folders of the VMs of group ``rg`` that run."""
    runner = _runner(emu)
    found = [runner.folder_of(k) for k, vm in runner.identities.items() if vm.resource_group == rg]
    return [folder for folder in found if folder is not None]


def test_same_named_vms_in_two_groups_run_apart(running: Emulator, tmp_path: Path) -> None:
    for rg in ("ga", "gb"):
        _make_vm(running, rg, "vm", f"#!/bin/bash\necho vm-in-{rg}\nexec sleep 600\n")
        path = f"{_group(rg)}/providers/Microsoft.Compute/virtualMachineScaleSets/ss"
        script = f"#!/bin/bash\necho booted-in-{rg}\nexec sleep 600\n"
        assert _raw(running, "PUT", path, _scaleset_body(script))[0] == 201
    # four VMs, each with its identity and a folder named after it
    named = sorted((vm.resource_group, vm.name) for vm in _runner(running).identities.values())
    assert named == [("ga", "ss_0"), ("ga", "vm"), ("gb", "ss_0"), ("gb", "vm")]
    vms = tmp_path / "emulator" / "vms"
    assert len(list(vms.glob("ss_0-*"))) == 2 and len(list(vms.glob("vm-*"))) == 2
    ga, gb = _folders(running, "ga"), _folders(running, "gb")
    for rg, folders in (("ga", ga), ("gb", gb)):
        (log,) = [folder / "boot.log" for folder in folders if folder.name.startswith("ss_0-")]
        eventually(lambda log=log, rg=rg: f"booted-in-{rg}" in log.read_text(), "a boot")
    eventually(lambda: all(processes_under(folder) for folder in ga + gb), "four VMs to run")
    compute = _compute(running)
    for rg in ("ga", "gb"):  # each VM's serial log is its own
        links = compute.virtual_machines.retrieve_boot_diagnostics_data(rg, "vm")
        assert f"vm-in-{rg}" in _blob(running, links.serial_console_log_blob_uri)
        links = compute.virtual_machine_scale_set_vms.retrieve_boot_diagnostics_data(rg, "ss", "0")
        assert f"booted-in-{rg}" in _blob(running, links.serial_console_log_blob_uri)

    assert _raw(running, "DELETE", _group("ga"))[0] == 202
    eventually(lambda: not any(processes_under(f) for f in ga), "ga's VMs to stop")
    assert all(processes_under(folder) for folder in gb)  # gb's run on
    assert {vm.resource_group for vm in _runner(running).identities.values()} == {"gb"}
    statuses = compute.virtual_machines.instance_view("gb", "vm").statuses
    assert statuses[-1].code == "PowerState/running"
    (member,) = compute.virtual_machine_scale_set_vms.list("gb", "ss", expand="instanceView")
    assert member.instance_view.statuses[-1].code == "PowerState/running"


def test_a_scale_set_made_again_at_once_is_not_stopped_by_the_old_ones_stop(
    running: Emulator,
) -> None:
    path = f"{_group('g')}/providers/Microsoft.Compute/virtualMachineScaleSets/ss"
    assert _raw(running, "PUT", _group("g"), {"location": LOCATION})[0] == 201
    # the old VM ignores SIGTERM: its stop goes on (in the background) for the whole grace
    stubborn = "#!/bin/bash\ntrap '' TERM\nsleep 600\n"
    assert _raw(running, "PUT", path, _scaleset_body(stubborn))[0] == 201
    (old,) = _folders(running, "g")
    eventually(lambda: bool(processes_under(old)), "the old VM to run")
    assert _raw(running, "DELETE", path)[0] == 202
    assert _raw(running, "PUT", path, _scaleset_body(SLEEPER))[0] == 201
    (new,) = _folders(running, "g")
    assert new != old and new.name.startswith("ss_0-")
    eventually(lambda: bool(processes_under(new)), "the new VM to run")
    eventually(lambda: not processes_under(old), "the old VM's stop to end")
    assert processes_under(new)  # the new VM runs on, as ARM says
    (member,) = _compute(running).virtual_machine_scale_set_vms.list(
        "g", "ss", expand="instanceView"
    )
    assert member.instance_view.statuses[-1].code == "PowerState/running"


def test_a_put_in_another_casing_keeps_the_name_and_the_group_delete_stops_the_vm(
    running: Emulator,
) -> None:
    made = _make_vm(running, "g", "VM1")
    assert _raw(running, "PUT", _nic_path("g", "vm1-NIC"), _nic_body())[0] == 200
    status, nic = _raw(running, "GET", _nic_path("g", "vm1-nic"))
    assert status == 200 and nic["name"] == "VM1-nic" and nic["id"].endswith("/VM1-nic")
    status, again = _raw(running, "PUT", _vm_path("g", "vm1"), _vm_body("g", "VM1-nic"))
    assert status == 200
    assert again["name"] == "VM1" and again["id"] == made["id"]  # as Azure: the first name
    assert again["properties"]["vmId"] == made["properties"]["vmId"]
    (listed,) = _compute(running).virtual_machines.list("g")
    assert listed.name == "VM1"
    (folder,) = _folders(running, "g")
    assert folder.name.startswith("VM1-")
    eventually(lambda: bool(processes_under(folder)), "the VM to run")
    assert _raw(running, "DELETE", _group("g"))[0] == 202
    assert _runner(running).identities == {}
    eventually(lambda: not processes_under(folder), "the VM to stop with its group")


def _secrets_in(answer: Any) -> list[str]:
    text = json.dumps(answer)
    return [word for word in ("adminPassword", "customData", "userData") if word in text]


def test_vm_answers_keep_the_password_and_custom_data_and_user_data_unless_asked(
    records: Emulator,
) -> None:
    answer = _make_vm(records, "g", "vm1")
    assert _secrets_in(answer) == []  # the PUT's own answer
    for query in ("", "?$expand=instanceView"):
        status, got = _raw(records, "GET", _vm_path("g", "vm1") + query)
        assert status == 200 and _secrets_in(got) == []
    for path in (
        f"{_group('g')}/providers/Microsoft.Compute/virtualMachines",
        f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines",
    ):
        status, listed = _raw(records, "GET", path)
        assert status == 200 and len(listed["value"]) == 1 and _secrets_in(listed) == []
    # user data comes back on asking, as Azure's $expand=userData; the others never
    asked = _compute(records).virtual_machines.get("g", "vm1", expand="userData")
    assert base64.b64decode(asked.user_data) == b"user-data-on-asking"
    assert asked.os_profile.admin_password is None and asked.os_profile.custom_data is None


def test_vm_and_nic_routes_in_a_missing_group_say_so(records: Emulator) -> None:
    _make_vm(records, "g", "vm1")
    assert _raw(records, "DELETE", _group("g"))[0] == 202
    vm, nic = _vm_path("g", "vm1"), _nic_path("g", "vm1-nic")
    for method, path in [
        ("GET", vm),
        ("DELETE", vm),
        ("GET", vm + "/instanceView"),
        ("POST", vm + "/retrieveBootDiagnosticsData"),
        ("GET", nic),
        ("DELETE", nic),
    ]:
        status, body = _raw(records, method, path)
        assert (status, body["error"]["code"]) == (404, "ResourceGroupNotFound"), (method, path)
    # in a group that exists: a missing NIC is not found, a missing VM's DELETE is a no-op
    assert _raw(records, "PUT", _group("g"), {"location": LOCATION})[0] == 201
    status, body = _raw(records, "GET", nic)
    assert (status, body["error"]["code"]) == (404, "ResourceNotFound")
    assert _raw(records, "DELETE", vm) == (204, None)
    assert _raw(records, "DELETE", nic) == (204, None)


def test_a_nic_in_use_is_the_one_of_its_group(records: Emulator) -> None:
    _make_vm(records, "ga", "vm1")
    assert _raw(records, "PUT", _group("gb"), {"location": LOCATION})[0] == 201
    assert _raw(records, "PUT", _nic_path("gb", "vm1-nic"), _nic_body())[0] == 201
    status, body = _raw(records, "DELETE", _nic_path("ga", "vm1-nic"))
    assert (status, body["error"]["code"]) == (400, "NicInUse")
    assert _raw(records, "DELETE", _nic_path("gb", "vm1-nic"))[0] == 202  # same name, unused


STUBBORN = "#!/bin/bash\ntrap '' TERM\nexec sleep 600\n"


def test_a_vm_delete_succeeds_only_once_its_processes_are_gone(running: Emulator) -> None:
    _make_vm(running, "gd", "slow", STUBBORN)  # it ignores SIGTERM: stopping takes a while
    [folder] = _folders(running, "gd")
    eventually(lambda: bool(processes_under(folder)), "the VM to run")
    _compute(running).virtual_machines.begin_delete("gd", "slow").result()
    assert processes_under(folder) == []  # a deleted VM no longer answers, as on Azure


def test_names_the_sdk_quotes_are_taken_as_azure_takes_them(records: Emulator) -> None:
    env = records.environment()
    settings = ArmSettings(
        env["AZMANAGERS_ARM_ENDPOINT"], env["AZMANAGERS_ARM_CA"], env["AZMANAGERS_ARM_TOKEN"], 0
    )
    groups = resource_client(settings, SUB).resource_groups
    made = groups.create_or_update("my(rg)", {"location": LOCATION})  # sent as my%28rg%29
    assert made.name == "my(rg)" and made.id.endswith("/resourceGroups/my(rg)")
    assert groups.get("my(rg)").name == "my(rg)"


def test_bodies_whose_envelope_is_not_azures_are_a_400(records: Emulator) -> None:
    assert _raw(records, "PUT", _group("ge"), {"location": LOCATION})[0] in (200, 201)
    for path, body in (
        (_nic_path("ge", "n1"), {**_nic_body(), "tags": ["a"]}),
        (_nic_path("ge", "n2"), {**_nic_body(), "location": 5}),
        (_vm_path("ge", "v1"), {"location": LOCATION, "properties": "x"}),
        (
            _group("ge") + "/providers/Microsoft.Network/publicIPAddresses/p1",
            {"location": LOCATION, "sku": "x"},
        ),
    ):
        status, answer = _raw(records, "PUT", path, body)
        assert status == 400, (path, answer)
        assert _raw(records, "GET", path)[0] == 404  # nothing was made
