"""Checks shared by batch models, sweeps and specs: text, names, paths, sources, durations."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import NoReturn

from azmanagers.config.durations import parse_duration as parse_duration
from azmanagers.errors import ConfigError

RESERVED_PREFIXES = ("AZM_", "AZ_BATCH_")
"""Variable names the runner sets itself: a model's env and its parameters may not use them."""
URL_SCHEMES = ("file://", "az://")

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def unknown_key(key: object, known: Iterable[str], *, where: str) -> NoReturn:
    """Raise ConfigError for an unknown ``key`` in ``where``, with the closest known key."""
    names = sorted(known)
    hint = difflib.get_close_matches(str(key), names, n=1)
    extra = f" Did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"unknown key {key!r} in {where}.{extra} Known keys: {', '.join(names)}.")


def canonical_json(data: object) -> bytes:
    """The canonical JSON bytes of ``data``: sorted keys, no spaces, UTF-8."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def check_text(value: object, *, what: str, max_chars: int | None = None) -> str:
    """Return ``value`` if it is a str a process can receive (UTF-8, no NUL), else ConfigError."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__} {value!r}.")
    if "\0" in value:
        raise ConfigError(f"{what} contains a NUL character; remove it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid UTF-8 text (it holds a lone surrogate).") from None
    if max_chars is not None and len(value) > max_chars:
        raise ConfigError(f"{what} has {len(value)} characters; at most {max_chars} are allowed.")
    return value


def check_variable(name: object, *, what: str, max_chars: int | None = None) -> str:
    """Return ``name`` if it is a usable environment variable name, else ConfigError.

    Letters, digits and ``_``, not starting with a digit, and not ``AZM_*`` or ``AZ_BATCH_*``
    (the runner sets those).
    """
    if not isinstance(name, str) or not _VAR_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} name {name!r} is not a variable name; use letters, digits and '_', "
            "not starting with a digit (e.g. RUN_NO)."
        )
    if max_chars is not None and len(name) > max_chars:
        raise ConfigError(f"{what} name {name!r} is longer than {max_chars} characters.")
    if name.upper().startswith(RESERVED_PREFIXES):
        raise ConfigError(
            f"{what} name {name!r} starts with {' or '.join(RESERVED_PREFIXES)}, which the runner "
            "sets for every run; choose another name."
        )
    return name


def check_relative(path: str, *, what: str) -> str:
    """Return a run-dir-relative path or glob that cannot escape the run dir, normalised.

    Refused: empty, absolute, a ``..`` part, a backslash, a NUL. ``.`` parts and repeated
    ``/`` are dropped (``./out//*.nc`` -> ``out/*.nc``).

    Raises
    ------
    ConfigError
        Naming ``what`` and the path.
    """
    check_text(path, what=what)
    fix = "give a path relative to the run directory, such as 'output/**' or '*.log'"
    if path.startswith(("/", "~")) or re.match(r"[A-Za-z]:", path):
        raise ConfigError(f"{what} {path!r} is absolute; {fix}.")
    if "\\" in path:
        raise ConfigError(f"{what} {path!r} has a backslash; use '/' between folders.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(
            f"{what} {path!r} has a '..' part, which leaves the run directory; {fix}."
        )
    if not parts:
        raise ConfigError(f"{what} {path!r} names no file; {fix}.")
    return "/".join(parts)


def check_source(value: object, *, what: str) -> str:
    """Return an input source (a local path, or a ``file://`` / ``az://`` URL) as a str."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = check_text(value, what=what)
    if not text.strip():
        raise ConfigError(f"{what} is empty; give a file, a folder or a storage URL.")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if scheme and not text.startswith(URL_SCHEMES):
        raise ConfigError(
            f"{what} {text!r} has the unknown scheme {scheme.group(1)!r}; use a local path, "
            f"or a URL starting with {' or '.join(URL_SCHEMES)}."
        )
    return text


def is_url(source: str) -> bool:
    """Whether an input source is a storage URL (not a local path)."""
    return source.startswith(URL_SCHEMES)


MAX_ARG_BYTES = 128 * 1024
"""The most Linux takes in one argument or one ``NAME=value`` of the environment
(``MAX_ARG_STRLEN``, with its NUL): a run's command line and each variable must fit."""
MAX_ENV_BYTES = 1024 * 1024
"""The most a model's own variables may take together (the kernel's limit for arguments and
environment together is 2 MiB by default; the worker's and azmanagers' variables need room)."""


def check_arg_size(text: str, *, what: str, hint: str) -> None:
    """Refuse ``text`` when it would not fit in one argument or variable of a process."""
    size = len(text.encode()) + 1
    if size > MAX_ARG_BYTES:
        raise ConfigError(
            f"{what} takes {size - 1} bytes; a Linux process takes at most {MAX_ARG_BYTES - 1} "
            f"bytes in one argument or variable: {hint}."
        )


def check_run_sizes(run: str, command: str, env: Mapping[str, str]) -> None:
    """Refuse a run whose command or env, its parameters substituted, a process cannot take."""
    where = f"run {run} (its parameters substituted)"
    hint = "put data this large in an input file and give its name instead"
    check_arg_size(command, what=f"the command of {where}", hint=hint)
    for key, value in env.items():
        check_arg_size(f"{key}={value}", what=f"env {key} of {where}", hint=hint)
    total = sum(len(f"{k}={v}".encode()) + 1 for k, v in env.items())
    if total > MAX_ENV_BYTES:
        raise ConfigError(f"the env of {where} takes {total} bytes, over {MAX_ENV_BYTES}: {hint}.")


def env_value(value: object, *, what: str, max_chars: int | None = None) -> str:
    """A variable's value as text: a str, or an int or finite float written out."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(
            f"{what} is {value!r}; give text such as 'true' or '1' (in quotes in YAML)."
        )
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return check_text(value, what=what, max_chars=max_chars)


def checked_env(env: Mapping[str, object] | None) -> dict[str, str]:
    """A model's env checked: names, values as text, and sizes a process can take."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise ConfigError(f"model env must be a mapping of names to values, got {env!r}.")
    out: dict[str, str] = {}
    hint = "put a value this large in an input file and give its name instead"
    for key, value in env.items():
        check_variable(key, what="env")
        out[key] = env_value(value, what=f"env {key}")
        check_arg_size(f"{key}={out[key]}", what=f"env {key}", hint=hint)
    total = sum(len(f"{k}={v}".encode()) + 1 for k, v in out.items())
    if total > MAX_ENV_BYTES:
        raise ConfigError(
            f"the model's env takes {total} bytes; at most {MAX_ENV_BYTES} fit beside what "
            f"a process needs: {hint}."
        )
    return out


def check_whole(value: object, what: str, low: int, high: int, unit: str) -> int:
    """``value`` as a whole number from ``low`` to ``high`` (ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number from {low} to {high}, got {value!r}.")
    if value < low:
        raise ConfigError(f"{what} is {value}; give at least {low}.")
    if value > high:
        raise ConfigError(f"{what} is {value}; at most {high} {unit} are allowed: give fewer.")
    return value


def check_duration(value: object, what: str) -> float:
    """``value`` (seconds, or ``"10m"``-style) in seconds (ConfigError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{what} must be seconds or a duration such as '10m', got {value!r}.")
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def check_library(value: object, where: str, libraries: tuple[str, ...]) -> str:
    """``value`` as one of ``libraries`` (ConfigError otherwise)."""
    text = value.strip().lower() if isinstance(value, str) else repr(value)
    if text in libraries:
        return text
    hint = difflib.get_close_matches(text, libraries, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ConfigError(
        f"{where}: mpi={value!r} is not an MPI library we launch{extra}; give "
        f"{' or '.join(repr(m) for m in libraries)}."
    )


def check_coordination(value: object, where: str) -> str | None:
    """A coordination command (None: none), checked like a command."""
    if value is None:
        return None
    text = check_text(value, what=f"{where}: coordination")
    if not text.strip():
        raise ConfigError(f"{where}: coordination is empty; give a command, or leave it out.")
    check_arg_size(
        text, what=f"{where}: coordination", hint="put it in a script input and run that"
    )
    return text
