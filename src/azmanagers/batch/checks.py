"""Checks shared by batch models, sweeps and specs: text, names, paths, sources, durations."""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Iterable
from typing import NoReturn

from azmanagers.errors import ConfigError

RESERVED_PREFIXES = ("AZM_", "AZ_BATCH_")
"""Variable names the runner sets itself: a model's env and its parameters may not use them."""
URL_SCHEMES = ("file://", "az://")

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_DURATION_PART = re.compile(rf"({_NUMBER})\s*([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_HINT = 'give seconds (5400) or a duration such as "90s", "30m", "2h", "1d" or "1h30m"'


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


def env_value(value: object, *, what: str, max_chars: int | None = None) -> str:
    """A variable's value as text: a str, or an int or finite float written out."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(
            f"{what} is {value!r}; give text such as 'true' or '1' (in quotes in YAML)."
        )
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return check_text(value, what=what, max_chars=max_chars)


def parse_duration(value: str | float | int) -> float:
    """Return a duration in seconds: a number, or text such as ``"90s"``, ``"2h"``, ``"1h30m"``.

    Raises
    ------
    ConfigError
        Unless the result is a finite number of seconds > 0.
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif re.fullmatch(rf"(?:(?:{_NUMBER})\s*[smhd]\s*)+", text):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"duration {value!r} is not a time > 0; {_DURATION_HINT}.")
    return seconds
