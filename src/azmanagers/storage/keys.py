"""Storage keys: what a safe key or listing prefix is, checked before any I/O on every back-end."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from azmanagers.errors import ConfigError

MAX_KEY_CHARS = 1024
"""Longest key accepted (Blob names may be 1,024 characters, prefix included: see blob.py)."""

MAX_SEGMENT_BYTES = 255
"""Longest key segment in UTF-8 bytes (a file name on every common file system)."""

REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp"})
"""Unicode categories refused in keys: controls, lone surrogates (undecodable file names),
format characters (bidi overrides, zero-width) and line/paragraph separators, which make keys
that cannot be stored or that print misleadingly."""

RESERVED_SEGMENT = ".azm-"
"""Key segments starting with this are ours (hash sidecars, temp files) on every back-end."""


def check_key(key: object, *, what: str = "storage key") -> str:
    """Return ``key`` when it is a safe relative key, else raise ConfigError.

    A key is "/"-separated, relative, with no empty, "." or ".." segment, no backslash, no
    control, format, separator or lone-surrogate character (REFUSED_CATEGORIES), no segment
    starting with ".azm-" (ours), each segment at most 255 UTF-8 bytes, at most 1,024
    characters in all.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{what} {key!r}: expected a non-empty string such as 'inputs/a.txt'")
    if len(key) > MAX_KEY_CHARS:
        raise ConfigError(f"{what} {key[:40]!r}...: longer than {MAX_KEY_CHARS} characters")
    bad = next((c for c in key if unicodedata.category(c) in REFUSED_CATEGORIES), None)
    if "\\" in key or bad is not None:
        raise ConfigError(
            f"{what} {key!r}: backslashes, control, invisible (format/bidi), line-separator and "
            "undecodable (lone surrogate) characters are not allowed; rename it (use '/')"
        )
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ConfigError(
                f"{what} {key!r}: must be relative with no empty, '.' or '..' parts "
                "(no leading or doubled '/')"
            )
        if segment.startswith(RESERVED_SEGMENT):
            raise ConfigError(f"{what} {key!r}: names starting with {RESERVED_SEGMENT!r} are ours")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise ConfigError(
                f"{what} {key[:60]!r}...: the part {segment[:20]!r}... is longer than "
                f"{MAX_SEGMENT_BYTES} bytes (UTF-8); shorten that file or folder name"
            )
    return key


def check_unique(keys: Sequence[str]) -> None:
    """ConfigError when a key appears twice in one batch (which copy wins would be chance)."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ConfigError(f"storage key {key!r} appears twice in one put_files; keep one")
        seen.add(key)


def is_key(key: str) -> bool:
    """Tell whether ``key`` passes check_key (for listings, which skip other names)."""
    try:
        check_key(key)
    except ConfigError:
        return False
    return True


def check_prefix(prefix: object, *, what: str = "storage prefix") -> str:
    """Return a listing prefix: "" or a key, possibly ending with "/" (checked as a key)."""
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise ConfigError(f"{what} {prefix!r}: expected a string such as 'runs/'")
    check_key(prefix.removesuffix("/"), what=what)
    return prefix


def dir_prefix(prefix: object, *, what: str = "storage prefix") -> str:
    """Return "" or a checked prefix ending with "/" (a "folder")."""
    checked = check_prefix(prefix, what=what)
    return checked if checked in ("", f"{checked.rstrip('/')}/") else checked + "/"
