"""Tests of ``settings.resolve``: keyword > AZMANAGERS_* environment > template > default."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from azmanagers.config.settings import ClusterSettings, resolve
from azmanagers.errors import ConfigError

TEMPLATE = "mytmpl"


def settle(template: dict[str, Any] | None = None, **overrides: Any) -> ClusterSettings:
    return resolve(template or {}, overrides, template_name=TEMPLATE)


def test_defaults_without_template_env_or_keywords() -> None:
    assert settle() == ClusterSettings()


def test_result_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settle().nthreads = 4  # type: ignore[misc]


def test_template_overrides_defaults_and_unknown_template_keys_are_ignored() -> None:
    got = settle(
        {"nthreads": 3, "max_instances": 5, "memory_limit": "2GB", "vmSize": "Standard_D2s_v3"}
    )
    assert (got.nthreads, got.max_instances, got.memory_limit) == (3, 5, "2GB")
    assert got.join_timeout_s == ClusterSettings().join_timeout_s


@pytest.mark.parametrize(
    ("key", "env_value", "expected"),
    [
        ("join_timeout_s", "2.5", 2.5),
        ("max_replacements", "7", 7),
        ("death_timeout_s", "12", 12.0),
        ("nthreads", " 4 ", 4),
        ("reconcile_interval_s", "0.25", 0.25),
        ("scheduler_host", "0.0.0.0", "0.0.0.0"),
    ],
)
def test_environment_overrides_template(
    monkeypatch: pytest.MonkeyPatch, key: str, env_value: str, expected: object
) -> None:
    template_value = "10.0.0.4" if key == "scheduler_host" else 9
    monkeypatch.setenv("AZMANAGERS_" + key.upper(), env_value)
    got = settle({key: template_value})
    assert getattr(got, key) == expected
    assert type(getattr(got, key)) is type(expected)


def test_keyword_overrides_environment_and_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZMANAGERS_NTHREADS", "4")
    monkeypatch.setenv("AZMANAGERS_JOIN_TIMEOUT_S", "5")
    got = settle({"nthreads": 2, "join_timeout_s": 9}, nthreads=8)
    assert got.nthreads == 8
    assert got.join_timeout_s == 5.0


def test_keyword_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZMANAGERS_NTHREADS", "4")
    got = settle({"max_instances": 6}, nthreads=None, max_instances=None)
    assert (got.nthreads, got.max_instances) == (4, 6)
    assert settle(worker_host=None).worker_host is None  # worker_host=None: "choose there"


def test_full_precedence_chain_per_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZMANAGERS_DEATH_TIMEOUT_S", "20")
    monkeypatch.setenv("AZMANAGERS_MAX_REPLACEMENTS", "2")
    got = settle(
        {"death_timeout_s": 40, "max_replacements": 9, "reconcile_interval_s": 2},
        max_replacements=1,
    )
    assert got.death_timeout_s == 20.0  # env beats template
    assert got.max_replacements == 1  # keyword beats env
    assert got.reconcile_interval_s == 2.0  # template beats default
    assert got.retire_timeout_s == ClusterSettings().retire_timeout_s  # default


def test_accepted_values_of_loose_fields() -> None:
    assert settle(memory_limit=2**30).memory_limit == 2**30
    for size in ("auto", "4GiB", "500 MB", "0", 0):
        assert settle(memory_limit=size).memory_limit == size
    assert settle(worker_host=None).worker_host is None  # explicit: let the VM choose
    assert settle({"worker_host": None}).worker_host is None
    assert settle(provider="local").provider == "local"
    assert settle(max_instances=1).max_instances == 1


SOURCES = {
    "template": f"template {TEMPLATE!r}",
    "env": "environment variable AZMANAGERS_",
    "keyword": "the keyword argument",
}

ENV_KEYS = {
    "join_timeout_s",
    "max_replacements",
    "death_timeout_s",
    "nthreads",
    "reconcile_interval_s",
    "scheduler_host",
}

BAD_VALUES = [
    ("join_timeout_s", "soon", "positive number of seconds"),
    ("join_timeout_s", 0, "positive number of seconds"),
    ("join_timeout_s", -1.5, "positive number of seconds"),
    ("join_timeout_s", "nan", "positive number of seconds"),
    ("join_timeout_s", True, "positive number of seconds"),
    ("join_timeout_s", None, "positive number of seconds"),
    ("death_timeout_s", [1], "positive number of seconds"),
    ("reconcile_interval_s", "-0.1", "at least 0.1 seconds"),
    ("ttl_s", "0", "more than 60 seconds"),
    ("ttl_s", 59, "more than 60 seconds"),
    ("max_replacements", -1, "whole number >= 0"),
    ("max_replacements", "1.5", "whole number >= 0"),
    ("max_replacements", 2.5, "whole number >= 0"),
    ("max_replacements", "three", "whole number >= 0"),
    ("max_replacements", False, "whole number >= 0"),
    ("nthreads", "2.0", "whole number >= 1"),
    ("max_instances", {"n": 2}, "whole number >= 1"),
    ("memory_limit", True, "is not a memory size"),
    ("memory_limit", 2.5, "is not a memory size"),
    ("memory_limit", ["4GB"], "is not a memory size"),
    ("memory_limit", "lots", 'use "auto", a size such as "4GiB"'),
    ("memory_limit", "-4GiB", "is not a memory size"),
    ("memory_limit", -1, "is not a memory size"),
    ("dashboard", "maybe", "true or false"),
    ("dashboard_address", "", "HOST:PORT"),
    ("worker_host", 127, "wrong type"),
    ("provider", 3, "wrong type"),
    ("scheduler_host", ["h"], "wrong type"),
]


def _cases() -> list[Any]:
    out = []
    for key, value, fragment in BAD_VALUES:
        for source in ("template", "keyword", "env"):
            if source == "env" and (key not in ENV_KEYS or not isinstance(value, str)):
                continue
            if source == "keyword" and value is None:
                continue  # None means "not given" for keywords
            out.append(pytest.param(source, key, value, fragment, id=f"{source}-{key}-{value!r}"))
    return out


@pytest.mark.parametrize(("source", "key", "value", "fragment"), _cases())
def test_bad_values_raise_naming_the_source_and_key(
    monkeypatch: pytest.MonkeyPatch, source: str, key: str, value: Any, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        if source == "template":
            settle({key: value})
        elif source == "keyword":
            settle(**{key: value})
        else:
            monkeypatch.setenv("AZMANAGERS_" + key.upper(), value)
            settle()
    message = str(info.value)
    assert fragment in message
    assert key in message
    assert SOURCES[source] in message
    if source == "env":
        assert "AZMANAGERS_" + key.upper() in message
    assert repr(value) in message


def test_bad_environment_value_fails_even_when_a_keyword_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AZMANAGERS_NTHREADS", "many")
    with pytest.raises(ConfigError, match="AZMANAGERS_NTHREADS"):
        settle(nthreads=2)


def test_unknown_keyword_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError) as info:
        settle(nthread=2)
    message = str(info.value)
    assert "unknown setting 'nthread'" in message
    assert "Did you mean 'nthreads'?" in message
    assert "max_instances" in message  # lists what is known


def test_unknown_keyword_without_a_close_name() -> None:
    with pytest.raises(ConfigError) as info:
        settle(zzzzzz=1)
    assert "Did you mean" not in str(info.value)


def test_nthreads_zero_raises() -> None:
    with pytest.raises(
        ConfigError, match="nthreads from the keyword argument must be a whole number >= 1"
    ):
        settle(nthreads=0)


@pytest.mark.parametrize("source", ["template", "env"])
def test_nthreads_zero_error_names_its_source(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    with pytest.raises(ConfigError) as info:
        if source == "template":
            settle({"nthreads": 0})
        else:
            monkeypatch.setenv("AZMANAGERS_NTHREADS", "0")
            settle()
    assert SOURCES[source] in str(info.value)


def test_azure_templates_let_the_vm_choose_its_worker_address() -> None:
    assert settle({"provider": "azure"}).worker_host is None
    assert settle({"provider": "local"}).worker_host == "127.0.0.1"


def test_azure_templates_wait_minutes_for_a_vm_to_join() -> None:
    assert settle({"provider": "azure"}).join_timeout_s == 600.0
    assert settle({"provider": "azure", "join_timeout_s": 900}).join_timeout_s == 900.0
    assert settle({"provider": "local"}).join_timeout_s == 120.0


def test_bootstrap_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settle().bootstrap_requirement == ""
    assert settle().pip_args() == ()
    monkeypatch.setenv("AZMANAGERS_BOOTSTRAP_PIP_ARGS", "--index-url 'https://h/a b' --pre")
    resolved = settle({"bootstrap_requirement": "azmanagers @ https://h/azmanagers.whl"})
    assert resolved.pip_args() == ("--index-url", "https://h/a b", "--pre")
    assert resolved.bootstrap_requirement == "azmanagers @ https://h/azmanagers.whl"
    assert "https://h/a b" not in repr(resolved)  # an index URL may hold a token
    monkeypatch.setenv("AZMANAGERS_BOOTSTRAP_PIP_ARGS", "--index-url 'unclosed")
    with pytest.raises(ConfigError, match=r"AZMANAGERS_BOOTSTRAP_PIP_ARGS.*shell quoting"):
        settle()


def test_the_dashboard_is_off_and_bound_to_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (settle().dashboard, settle().dashboard_address) == (False, "127.0.0.1:8787")
    monkeypatch.setenv("AZMANAGERS_DASHBOARD", "yes")
    assert settle().dashboard is True
    assert settle(dashboard_address="127.0.0.1:9000").dashboard_address == "127.0.0.1:9000"


def test_the_reconcile_interval_defaults_to_the_providers_pace() -> None:
    assert settle().reconcile_interval_s is None
    assert settle({"provider": "azure"}).reconcile_interval_s is None
    assert settle(reconcile_interval_s=3).reconcile_interval_s == 3.0


def test_env_names_and_values_are_checked() -> None:
    from azmanagers.config.settings import check_env

    check_env({"OMP_NUM_THREADS": "1", "_X9": ""})
    with pytest.raises(ConfigError, match=r"env variable name '1BAD' is not valid.*e\.g\."):
        check_env({"1BAD": "x"})
    with pytest.raises(ConfigError, match="is not valid"):
        check_env({"AB\n": "x"})  # a trailing newline does not pass either
    with pytest.raises(ConfigError, match="must be a string") as info:
        check_env({"SECRETISH": 12345})
    assert "12345" not in str(info.value)  # values are never shown
