"""Detached VMs on the azure provider: a VM and its NIC from templates, through the emulator."""

from __future__ import annotations

import time

import pytest

import azmanagers
from azmanagers.emulator import Emulator
from tests.conftest import eventually
from tests.emulator.conftest import save_vm_templates

pytestmark = pytest.mark.integration


def _save_templates(name: str = "myvm", *, managed_identity: bool = False) -> None:
    save_vm_templates(name, managed_identity=managed_identity)


def test_a_detached_job_on_an_azure_vm(emulated_azure: Emulator) -> None:
    _save_templates()
    vm = azmanagers.addproc("myvm", name="azvm", timeout=90)
    try:
        assert vm.provider == "azure" and vm.port == 8081
        assert vm.host.startswith("127.") and vm.host != "127.0.0.1"  # its NIC's, loopback here
        assert vm.info()["name"] == "azvm"
        job = azmanagers.detachat(vm, lambda n: sum(range(n)), 10)
        assert job.result(timeout=60) == 45
        code = "import time\nprint('working', flush=True)\ntime.sleep(30)\n"
        slow = azmanagers.detachat(vm, code)
        deadline = time.monotonic() + 60
        while "working" not in slow.read():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        azmanagers.rmproc(vm)  # the running job ends with its VM
    assert emulated_azure.state.vms == {} and emulated_azure.state.nics == {}
    assert not vm.ping()


def test_an_azure_vm_with_a_managed_identity_deletes_itself_after_its_job(
    emulated_azure: Emulator,
) -> None:
    _save_templates()
    with pytest.raises(azmanagers.ConfigError, match="has no managed identity"):
        azmanagers.detach("myvm", persist=False)(abs)(-1)
    assert emulated_azure.state.vms == {}  # refused before any VM was made

    _save_templates("selfdeleting", managed_identity=True)

    @azmanagers.detach(
        "selfdeleting", persist=False, timeout=90, env={"AZMANAGERS_SELF_DELETE_GRACE_S": "1"}
    )
    def nightly(n: int) -> int:
        return n + 1

    job = nightly(41)
    assert job.result(timeout=60) == 42
    deadline = time.monotonic() + 60
    while emulated_azure.state.vms or emulated_azure.state.nics:
        assert time.monotonic() < deadline, "the VM did not delete itself (through ARM)"
        time.sleep(0.2)
    # the call is logged as its answer goes out, a moment after the VM left the state
    eventually(
        lambda: bool(
            emulated_azure.server.calls_matching("DELETE", f"/virtualMachines/{job.vm.name}")
        ),
        "the VM's own DELETE in the call log",
        10,
    )
    calls = emulated_azure.server.calls_matching("DELETE", f"/virtualMachines/{job.vm.name}")
    assert calls[0].status in (200, 202)
    azmanagers.rmproc(job.vm)  # forgetting a VM that is gone already is fine
