"""Cluster settings: keyword argument > environment (AZMANAGERS_*) > template > default."""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from azmanagers.errors import ConfigError
from azmanagers.providers.base import Priority


@dataclass(frozen=True)
class ClusterSettings:
    """How a cluster behaves; each field can come from a template, the environment or a keyword."""

    provider: str = "local"
    max_instances: int = 16
    nthreads: int = 1
    memory_limit: str | int = "auto"
    join_timeout_s: float = 120.0
    max_replacements: int = 3
    death_timeout_s: float = 30.0
    reconcile_interval_s: float | None = None
    """Seconds between two lists of the pool; None: the provider's pace (``provider.pace``)."""
    scheduler_host: str = "127.0.0.1"
    worker_host: str | None = "127.0.0.1"
    retire_timeout_s: float = 60.0
    ttl_s: float = 24 * 3600.0
    env_build_timeout_s: float = 900.0
    setup_timeout_s: float = 900.0
    """The longest a named cluster's setup script may run on a node (its join waits for it)."""
    spot: bool = False
    """Spot priority (evicted VMs are deleted; see replace_evicted)."""
    max_price: float = -1.0
    """The most to pay per VM hour on spot; -1: up to the regular price."""
    replace_evicted: bool = True
    """Replace evicted spot instances (else the cluster shrinks by them)."""
    spot_base_regular_priority_count: int = 0
    """With spot: this many instances are regular before any is spot (a priority mix)."""
    spot_regular_percentage_above_base: float = 0.0
    """With spot: this percentage of the instances beyond the base are regular (a mix)."""
    dashboard: bool = False
    """Serve Dask's dashboard (plain HTTP without authentication) on ``dashboard_address``."""
    dashboard_address: str = "127.0.0.1:8787"
    """Where the dashboard listens: loopback unless you choose otherwise (use an ssh tunnel)."""
    workers_can_submit: bool = False
    """Let tasks act as clients (get_client, Lock, Queue); a worker can then run code in the
    caller's process, so only for workers you trust like the caller's own machine."""
    bootstrap_requirement: str = field(default="", repr=False)  # a URL may hold a token
    """What a stock image pip-installs (default: azmanagers==<this version>)."""
    bootstrap_pip_args: str = field(default="", repr=False)  # may hold an index token
    """Extra pip arguments for that install, shell-quoted (e.g. "--index-url URL")."""

    def priority(self) -> Priority:
        """Return the instances' priority: regular, spot, or a mix of both."""
        return Priority(
            spot=self.spot,
            max_price=self.max_price,
            regular_base=self.spot_base_regular_priority_count,
            regular_percentage_above_base=self.spot_regular_percentage_above_base,
        )

    def pip_args(self) -> tuple[str, ...]:
        """Return ``bootstrap_pip_args`` split into arguments."""
        return tuple(shlex.split(self.bootstrap_pip_args))


MIN_TTL_S = 60.0
MIN_RECONCILE_INTERVAL_S = 0.1
"""The shortest reconcile_interval_s: each interval lists the pool (on Azure, an ARM read)."""
AZURE_JOIN_TIMEOUT_S = 600.0
"""The join deadline on Azure by default: VM allocation and boot take minutes, not seconds."""
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_ENV_PREFIX = "AZMANAGERS_"
_AT_LEAST_ONE = ("nthreads", "max_instances")
_FROM_ENV = (
    "spot",
    "spot_base_regular_priority_count",
    "spot_regular_percentage_above_base",
    "workers_can_submit",
    "dashboard",
    "dashboard_address",
    "bootstrap_requirement",
    "bootstrap_pip_args",
    "max_instances",
    "ttl_s",
    "join_timeout_s",
    "env_build_timeout_s",
    "setup_timeout_s",
    "max_replacements",
    "death_timeout_s",
    "nthreads",
    "reconcile_interval_s",
    "scheduler_host",
)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""One label of a host name (RFC 1123); used with ``fullmatch``."""
_MAX_HOSTNAME_CHARS = 253
_MEMORY_HINT = 'use "auto", a size such as "4GiB" or "500MB", a number of bytes, or 0 for no limit'


def check_timeout(
    timeout: object, what: str = "timeout", *, without: str = "leave it out for the default"
) -> float | None:
    """Return a wait's ``timeout`` in seconds (None stays None), or raise ConfigError.

    It must be a finite number > 0: ``nan`` and ``inf`` would make a wait without a deadline,
    and ``True`` is not one second. ``without`` says what leaving it out does.
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, (int, float))
        and not isinstance(timeout, bool)
        and math.isfinite(timeout)
        and timeout > 0
    ):
        return float(timeout)
    raise ConfigError(
        f"{what} must be a finite number of seconds > 0 (e.g. 300), got {timeout!r}; {without}."
    )


def check_env(env: Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``env`` maps valid variable names to strings a process can get.

    Names are letters, digits and ``_`` (so no ``=``, NUL or surrogate); values are UTF-8
    text without NUL. Checked before anything is made, so a bad entry never leaves a
    half-made pool behind. Messages name the key, never the value (it may be a secret).
    """
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ConfigError(
                f"env variable name {key!r} is not valid: use letters, digits and underscores, "
                "not starting with a digit (e.g. MY_SETTING_1)."
            )
        if not isinstance(value, str):
            raise ConfigError(
                f"env variable {key} must be a string, got a {type(value).__name__}; "
                f'use str(...) (e.g. {{"{key}": "1"}}).'
            )
        # The value may be a secret: the messages name the key, never the value.
        if "\x00" in value:
            raise ConfigError(
                f"the value of env variable {key!r} holds a NUL character, which no process "
                "environment can carry (it would be cut there); remove it."
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(
                f"the value of env variable {key!r} cannot be encoded as UTF-8 (it holds a lone "
                "surrogate, e.g. from decoding bytes with errors='surrogateescape'); pass "
                "proper text."
            ) from None


def _host(name: str, value: str, source: str) -> str:
    """Return ``value`` if it is an IP address or a host name, else raise ConfigError."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.split(".")
    if (
        len(value) <= _MAX_HOSTNAME_CHARS
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()  # "256.1.1.1" is a bad address, not a name
    ):
        return value
    raise ConfigError(
        f"{name} from {source} is neither an IP address nor a host name: {value!r}. Use an "
        "address of this machine such as 127.0.0.1 or 10.0.0.4, or a name such as "
        "head-0.internal."
    )


def _memory_limit(value: Any, source: str) -> str | int:
    """Return ``value`` if a Dask worker accepts it as its memory limit, else raise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
    elif isinstance(value, str):
        from dask.utils import parse_bytes

        if value.strip().lower() == "auto":
            return value
        try:
            if parse_bytes(value) >= 0:
                return value
        except (ValueError, TypeError, OverflowError):  # "1e400": too big for any machine
            pass
    raise ConfigError(
        f"memory_limit from {source} is not a memory size ({value!r}); {_MEMORY_HINT}."
    )


def _coerce(name: str, value: Any, source: str) -> Any:
    default = getattr(ClusterSettings(), name)
    kind = float if name == "reconcile_interval_s" else type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ConfigError(f"{name} from {source} must be true or false, got {value!r}.")
    if name == "max_price":
        try:
            price = float(value)
        except (TypeError, ValueError):
            price = -2.0
        if (price == -1.0 or price > 0) and not isinstance(value, bool):
            return price
        raise ConfigError(
            f"max_price from {source} must be -1 (up to the regular price) or a positive "
            f"price per hour, got {value!r}."
        )
    if name == "spot_regular_percentage_above_base":
        try:
            percentage = float(value)
        except (TypeError, ValueError):
            percentage = -1.0
        if 0.0 <= percentage <= 100.0 and not isinstance(value, bool):
            return percentage
        raise ConfigError(
            f"spot_regular_percentage_above_base from {source} must be a percentage from 0 "
            f"to 100, got {value!r}."
        )
    if name == "memory_limit":
        return _memory_limit(value, source)
    if name == "dashboard_address":
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise ConfigError(
            f"dashboard_address from {source} must be HOST:PORT (e.g. 127.0.0.1:8787), "
            f"got {value!r}."
        )
    if name == "worker_host" and value is None:
        return value
    if name in ("scheduler_host", "worker_host"):
        if isinstance(value, str):
            return _host(name, value, source)
    elif kind is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if name == "reconcile_interval_s" and number < MIN_RECONCILE_INTERVAL_S:
            raise ConfigError(
                f"reconcile_interval_s from {source} must be at least "
                f"{MIN_RECONCILE_INTERVAL_S:g} seconds, got {value!r}; leave it unset for the "
                "provider's own pace."
            )
        least = MIN_TTL_S if name == "ttl_s" else 0.0
        if least < number < float("inf") and not isinstance(value, bool):
            return number
        if name == "ttl_s":
            raise ConfigError(
                f"ttl_s from {source} must be more than {MIN_TTL_S:g} seconds (the expiry tag is "
                f"renewed every ttl_s/3), got {value!r}."
            )
        raise ConfigError(
            f"{name} from {source} must be a positive number of seconds, got {value!r}."
        )
    elif kind is int:
        try:
            whole = int(value)
        except (TypeError, ValueError):
            whole = -1
        least = 1 if name in _AT_LEAST_ONE else 0
        if whole >= least and not isinstance(value, bool) and str(whole) == str(value).strip():
            return whole
        raise ConfigError(f"{name} from {source} must be a whole number >= {least}, got {value!r}.")
    elif name == "bootstrap_pip_args":
        if isinstance(value, str):
            try:
                shlex.split(value)
            except ValueError as exc:
                raise ConfigError(
                    f"bootstrap_pip_args from {source} is not valid shell quoting ({exc}); "
                    'write it as on a command line, e.g. "--index-url https://host/simple".'
                ) from None
            return value
    elif isinstance(value, kind):
        return value
    if name.startswith("bootstrap_"):  # may hold an index token: never show the value
        raise ConfigError(f"{name} from {source} must be a string, got a {type(value).__name__}.")
    raise ConfigError(f"{name} from {source} has the wrong type: {value!r}.")


def resolve(
    template: Mapping[str, Any], overrides: Mapping[str, Any], *, template_name: str
) -> ClusterSettings:
    """Merge defaults, the template, the environment and keyword overrides, validating each."""
    names = {f.name for f in fields(ClusterSettings)}
    values: dict[str, Any] = {}
    if template.get("provider") == "azure":
        values["worker_host"] = None  # a VM listens on its own address, found there
        values["join_timeout_s"] = AZURE_JOIN_TIMEOUT_S
    for key, value in template.items():
        if key in names:
            values[key] = _coerce(key, value, f"template {template_name!r}")
    for key in _FROM_ENV:
        env_name = _ENV_PREFIX + key.upper()
        if env_name in os.environ:
            values[key] = _coerce(key, os.environ[env_name], f"environment variable {env_name}")
    for key, value in overrides.items():
        if key not in names:
            hint = difflib.get_close_matches(key, sorted(names), n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"unknown setting {key!r}.{extra} Known: {', '.join(sorted(names))}.")
        if value is not None or key == "worker_host":  # worker_host=None: choose it there
            values[key] = _coerce(key, value, "the keyword argument")
    settings = replace(ClusterSettings(), **values)
    if not settings.spot and (
        settings.spot_base_regular_priority_count or settings.spot_regular_percentage_above_base
    ):
        raise ConfigError(
            "spot_base_regular_priority_count and spot_regular_percentage_above_base set a mix "
            "of regular and spot instances: they need spot=True (without spot, every instance "
            "is regular)."
        )
    return settings
