"""The provider contract: every provider passes this suite (the azure one joins it later)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from azmanagers.emulator import sample_scaleset_template
from azmanagers.errors import ProviderError
from azmanagers.providers.base import (
    BootSpec,
    Instance,
    InstanceState,
    PoolSpec,
    Provider,
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
        from azmanagers.providers.azure.provider import AzureProvider

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
