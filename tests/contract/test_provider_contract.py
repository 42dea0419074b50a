"""The provider contract: every provider passes this suite (azure through the ARM emulator)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import azmanagers
from azmanagers.emulator import sample_scaleset_template
from azmanagers.errors import NotFoundError, ProviderError
from azmanagers.providers.azure.provider import AzureProvider
from azmanagers.providers.base import (
    BootSpec,
    Instance,
    InstanceState,
    Pace,
    PoolSpec,
    Provider,
    VMSpec,
)
from azmanagers.providers.local.provider import LocalProvider
from azmanagers.providers.tags import TAG_CLUSTER, owner_id, resource_tags
from tests.conftest import HAS_AZMANAGERS

DEADLINE_S = 20.0


SUB = "00000000-0000-0000-0000-00000000c0de"
RG = "azm-contract"


@pytest.fixture(params=["local", "azure"])
def provider(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Provider]:
    emulator = None
    made: Provider
    if request.param == "local":
        made = LocalProvider()
    else:
        from azmanagers.emulator import start_emulator
        from azmanagers.providers.azure._clients import ArmSettings, resource_client

        emulator = start_emulator(run_instances=True, folder=tmp_path / "emulator")
        for key, value in emulator.environment().items():
            monkeypatch.setenv(key, value)
        resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
            RG, {"location": "southcentralus"}
        )
        made = AzureProvider(SUB, RG)
    try:
        yield made
        for resource in made.list_owned_resources():
            made.delete_owned_resource(resource)
        assert made.list_unreadable_resources() == []
    finally:
        if emulator is not None:
            emulator.stop()


@pytest.fixture
def sleeper(tmp_path: Path) -> Path:
    """An agent stand-in: prints a line and sleeps (so instances stay RUNNING)."""
    path = tmp_path / "sleeper"
    path.write_text(f'#!/bin/bash\n{HAS_AZMANAGERS}echo "sleeper: $*"\nexec sleep 600\n')
    path.chmod(0o755)
    return path


def pool_spec(
    name: str, interpreter: Path, cluster: str | None = None, max_instances: int = 8
) -> PoolSpec:
    template = sample_scaleset_template(name, SUB, RG)
    return PoolSpec(
        name=name,
        boot=BootSpec(role="worker", payload={"x": 1}, env={"AZMANAGERS_PYTHON": str(interpreter)}),
        tags=resource_tags(cluster or name, owner_id(), 3600),
        template=template,  # the local provider ignores it
        max_instances=max_instances,
    )


def vm_spec(name: str, interpreter: Path) -> VMSpec:
    vm = azmanagers.build_vmtemplate(
        "ct-vm",
        subscriptionid=SUB,
        admin_username="azuser",
        location="southcentralus",
        resourcegroup=RG,
        imagegallery="gallery",
        imagename="image",
        vmsize="Standard_D4s_v3",
    )
    nic = azmanagers.build_nictemplate(
        "ct-nic",
        subscriptionid=SUB,
        resourcegroup_vnet=RG,
        vnet="vnet",
        subnet="subnet",
        location="southcentralus",
    )
    return VMSpec(
        name=name,
        boot=BootSpec(role="detached", payload={}, env={"AZMANAGERS_PYTHON": str(interpreter)}),
        tags=resource_tags(name, owner_id(), 3600),
        template=vm,  # the local provider ignores both templates
        nic_template=nic,
    )


def _both_providers_satisfy_the_protocol_statically() -> None:
    """Checked by mypy in test_the_providers_satisfy_the_protocol_statically, never run."""
    local: Provider = LocalProvider()
    azure: Provider = AzureProvider(SUB, RG)
    del local, azure


def wait_for(
    provider: Provider, pool: str, check: Callable[[list[Instance]], bool]
) -> list[Instance]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        instances = provider.list_instances(pool)
        if check(instances):
            return instances
        if time.monotonic() > deadline:
            pytest.fail(f"provider state never converged: {instances}")
        time.sleep(0.1)


def test_it_is_a_provider(provider: Provider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name


def test_create_pool_is_idempotent_and_starts_empty(provider: Provider, sleeper: Path) -> None:
    spec = pool_spec("ct-idem", sleeper)
    provider.create_pool(spec)
    provider.create_pool(spec)
    assert provider.list_instances("ct-idem") == []


def test_scale_up_list_delete_and_capacity(provider: Provider, sleeper: Path) -> None:
    provider.create_pool(pool_spec("ct-scale", sleeper))
    provider.scale_pool("ct-scale", 3)
    running = wait_for(
        provider,
        "ct-scale",
        lambda xs: len(xs) == 3 and all(i.state is InstanceState.RUNNING for i in xs),
    )
    assert len({i.id for i in running}) == 3
    assert all(i.pool == "ct-scale" and i.created_at <= time.time() for i in running)
    victim = running[0].id
    provider.delete_instances("ct-scale", [victim])
    provider.delete_instances("ct-scale", [victim])  # repeating is safe
    wait_for(provider, "ct-scale", lambda xs: victim not in {i.id for i in xs})
    assert len(provider.list_instances("ct-scale")) == 2
    # deleting lowered the capacity: scaling to 3 adds exactly one
    provider.scale_pool("ct-scale", 3)
    after = wait_for(provider, "ct-scale", lambda xs: len(xs) == 3)
    assert len({i.id for i in after} - {i.id for i in running}) == 1


def test_boot_log_is_readable_during_and_after_life(provider: Provider, sleeper: Path) -> None:
    provider.create_pool(pool_spec("ct-log", sleeper))
    provider.scale_pool("ct-log", 1)
    (inst,) = wait_for(provider, "ct-log", lambda xs: len(xs) == 1)
    deadline = time.monotonic() + DEADLINE_S
    while "sleeper: -m azmanagers.agent worker" not in provider.instance_log("ct-log", inst.id):
        assert time.monotonic() < deadline, provider.instance_log("ct-log", inst.id)
        time.sleep(0.1)
    provider.delete_instances("ct-log", [inst.id])
    wait_for(provider, "ct-log", lambda xs: not xs)
    if provider.name == "local":  # an Azure VM's boot diagnostics go with it
        assert "azmanagers: boot" in provider.instance_log("ct-log", inst.id)


def test_failed_boot_is_reported_failed_with_its_status(provider: Provider, tmp_path: Path) -> None:
    failing = tmp_path / "failing"
    failing.write_text(f"#!/bin/bash\n{HAS_AZMANAGERS}echo 'no luck' >&2\nexit 7\n")
    failing.chmod(0o755)
    provider.create_pool(pool_spec("ct-fail", failing))
    provider.scale_pool("ct-fail", 1)
    (inst,) = wait_for(provider, "ct-fail", lambda xs: len(xs) == 1)
    deadline = time.monotonic() + DEADLINE_S
    while "no luck" not in provider.instance_log("ct-fail", inst.id):  # every provider: the log
        assert time.monotonic() < deadline, "the failing boot's output never showed"
        time.sleep(0.1)
    if provider.name == "local":  # Azure reports no exit status: such a VM never joins
        (inst,) = wait_for(provider, "ct-fail", lambda xs: xs[0].state is InstanceState.FAILED)
        assert inst.exit_status == 7


def test_capacity_beyond_the_limit_is_refused(provider: Provider, sleeper: Path) -> None:
    if provider.name != "local":
        pytest.skip("on Azure the limit is the quota: see test_a_quota_is_checked_before_growth")
    provider.create_pool(pool_spec("ct-limit", sleeper, max_instances=2))
    with pytest.raises(ProviderError, match="limited to 2"):
        provider.scale_pool("ct-limit", 3)
    assert provider.list_instances("ct-limit") == []


def test_owned_resources_are_found_by_exact_tag(provider: Provider, sleeper: Path) -> None:
    provider.create_pool(pool_spec("ct-abc", sleeper, cluster="abc"))
    provider.create_pool(pool_spec("ct-abcd", sleeper, cluster="abcd"))
    only = provider.list_owned_resources(cluster="abc")
    assert [r.name for r in only] == ["ct-abc"]
    assert only[0].tags[TAG_CLUSTER] == "abc"
    assert only[0].owner_alive
    assert {r.name for r in provider.list_owned_resources()} >= {"ct-abc", "ct-abcd"}


def test_delete_pool_removes_everything_and_is_idempotent(
    provider: Provider, sleeper: Path
) -> None:
    provider.create_pool(pool_spec("ct-del", sleeper))
    provider.scale_pool("ct-del", 2)
    wait_for(provider, "ct-del", lambda xs: len(xs) == 2)
    provider.delete_pool("ct-del", wait=True)
    assert provider.list_instances("ct-del") == []
    assert "ct-del" not in {r.name for r in provider.list_owned_resources()}
    provider.delete_pool("ct-del", wait=True)


def test_a_quota_is_checked_before_growth(provider: Provider, sleeper: Path) -> None:
    spec = pool_spec("ct-quota", sleeper)
    provider.check_capacity(spec.template, 2)  # within every limit: no error
    provider.check_capacity(spec.template, 0)
    if provider.name == "azure":
        with pytest.raises(ProviderError, match="not enough quota"):
            provider.check_capacity(spec.template, 10_000)


def test_the_providers_satisfy_the_protocol_statically() -> None:
    # mypy checks the typed assignments above: a missing or mistyped method fails here.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", __file__],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_its_pace_is_valid(provider: Provider) -> None:
    pace = provider.pace
    assert isinstance(pace, Pace)
    assert 0 < pace.after_change_s <= pace.steady_s
    assert pace.change_window_s >= 0
    assert pace.interval_s(pace.change_window_s + 1) == pace.steady_s
    if pace.change_window_s > 0:
        assert pace.interval_s(0) == pace.after_change_s


def test_loopback_is_reachable_from_instances_here(provider: Provider) -> None:
    # local: process-VMs run here; azure on the emulator: ARM itself is on loopback.
    provider.check_reachable("127.0.0.1")
    provider.check_reachable("10.0.0.4")


def test_scaling_a_missing_pool_raises_not_found(provider: Provider) -> None:
    with pytest.raises(NotFoundError):
        provider.scale_pool("ct-missing", 1)
    with pytest.raises(NotFoundError):
        provider.set_pool_tags("ct-missing", resource_tags("ct-missing", owner_id(), 60))


def test_set_pool_tags_replaces_them(provider: Provider, sleeper: Path) -> None:
    provider.create_pool(pool_spec("ct-tags", sleeper))
    renewed = {**resource_tags("ct-tags", owner_id(), 7200), "azm-contract": "renewed"}
    provider.set_pool_tags("ct-tags", renewed)
    provider.set_pool_tags("ct-tags", renewed)  # repeating is safe
    (found,) = provider.list_owned_resources(cluster="ct-tags")
    assert found.name == "ct-tags"
    assert dict(found.tags) == renewed


def test_a_vm_is_created_read_logged_and_deleted(provider: Provider, sleeper: Path) -> None:
    info = provider.create_vm(vm_spec("ct-vm1", sleeper))
    assert info.name == "ct-vm1"
    assert info.state in (InstanceState.CREATING, InstanceState.RUNNING)
    assert info.tags[TAG_CLUSTER] == "ct-vm1"
    deadline = time.monotonic() + DEADLINE_S
    got = provider.get_vm("ct-vm1")
    while got is None or got.state is not InstanceState.RUNNING:
        assert time.monotonic() < deadline, f"the VM never ran: {got}"
        time.sleep(0.1)
        got = provider.get_vm("ct-vm1")
    assert ipaddress.ip_address(got.address).is_loopback  # a process-VM on this machine
    while "sleeper: -m azmanagers.agent detached" not in provider.vm_log("ct-vm1"):
        assert time.monotonic() < deadline, provider.vm_log("ct-vm1")
        time.sleep(0.1)
    owned = provider.list_owned_resources(cluster="ct-vm1")
    assert [(r.kind, r.name) for r in owned] == [("vm", "ct-vm1")]
    provider.delete_vm("ct-vm1")
    assert provider.get_vm("ct-vm1") is None
    provider.delete_vm("ct-vm1")  # repeating is safe
    assert provider.list_owned_resources(cluster="ct-vm1") == []


def test_a_missing_vm_is_none_and_deleting_it_is_safe(provider: Provider) -> None:
    assert provider.get_vm("ct-nothing") is None
    assert provider.vm_log("ct-nothing") == ""
    provider.delete_vm("ct-nothing")
