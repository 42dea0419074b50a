"""Values refused at the call with a ConfigError: env the OS cannot take, sizes, hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import azmanagers
from azmanagers.config.settings import check_env, resolve
from azmanagers.errors import ConfigError, ProviderError
from azmanagers.providers.base import BootSpec, PoolSpec
from azmanagers.providers.local.provider import LocalProvider

SECRET = "s3cret-token"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TOKEN": SECRET + "\ud800"}, "TOKEN"),  # cannot be UTF-8 encoded
        ({"TOKEN": SECRET + "\x00y"}, "TOKEN"),  # NUL: the OS cut it to what came before
        ({"TO\x00KEN": SECRET}, "TO\\x00KEN"),
        ({"TO=KEN": SECRET}, "TO=KEN"),
        ({"A\ud800": SECRET}, "A\\ud800"),
    ],
)
def test_check_env_refuses_what_the_os_cannot_pass_naming_the_key_only(
    env: dict[str, str], key: str
) -> None:
    # Before: values with a lone surrogate or a NUL passed (a bare UnicodeEncodeError later,
    # or the worker saw 'xy' for 'x\x00y').
    with pytest.raises(ConfigError) as info:
        check_env(env)
    message = str(info.value)
    assert key in message and SECRET not in message


@pytest.mark.parametrize("value", ["\ud800", "x\x00y"])
def test_addprocs_refuses_such_env_and_makes_nothing(value: str, azm_home: Path) -> None:
    with pytest.raises(ConfigError, match="'A'"):
        azmanagers.addprocs("local", 1, env={"A": value})
    pools = azm_home / "state" / "local" / "pools"
    assert not pools.exists() or list(pools.iterdir()) == []


def test_a_pool_that_cannot_be_made_leaves_no_folder(azm_home: Path) -> None:
    # Before: instances/ and logs/ were made, then writing the boot script failed: a pool
    # folder without pool.json, which gc never sees.
    provider = LocalProvider()
    bad = PoolSpec(
        name="half",
        boot=BootSpec(role="worker", payload={}, env={"A": "\ud800"}),
        tags={},
        max_instances=1,
    )
    with pytest.raises(ProviderError, match="'half'"):
        provider.create_pool(bad)
    assert list((provider.root / "pools").iterdir()) == []


def settle(**overrides: Any) -> Any:
    return resolve({"provider": "local"}, overrides, template_name="t")


@pytest.mark.parametrize("value", ["1e400", "9" * 400, "1e400 GiB"])
def test_an_enormous_memory_limit_is_a_config_error(value: str) -> None:
    # Before: OverflowError: cannot convert float infinity to integer.
    with pytest.raises(ConfigError, match='use "auto", a size such as "4GiB"'):
        settle(memory_limit=value)


@pytest.mark.parametrize("host", ["256.1.1.1", "1.2.3", "a b", "host;rm", "-x.example", "", "h\n"])
def test_a_bad_scheduler_host_is_a_config_error(host: str) -> None:
    # Before: accepted, then "RuntimeError: TLSOnlyScheduler failed to start".
    with pytest.raises(ConfigError, match="scheduler_host from the keyword argument"):
        settle(scheduler_host=host)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.0.0.4", "::1", "fe80::1", "localhost", "head-0.internal.example"]
)
def test_good_scheduler_hosts_pass(host: str) -> None:
    assert settle(scheduler_host=host).scheduler_host == host
    assert settle(worker_host=host).worker_host == host


def test_a_bad_worker_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="worker_host"):
        settle(worker_host="999.1.1.1")
