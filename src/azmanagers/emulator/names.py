"""Azure's naming rules for what the emulator creates: length and characters, per type."""

from __future__ import annotations

import re
from collections.abc import Callable

_COMPUTE_FORBIDDEN = set(" \\/\"'[]:|<>+=;,?*@&#%")
_NETWORK = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_GROUP = re.compile(r"[\w().-]*[\w()-]")


def _compute_problem(name: str, limit: int) -> str | None:
    if not 1 <= len(name) <= limit:
        return f"it must be 1 to {limit} characters long"
    bad = sorted(set(name) & _COMPUTE_FORBIDDEN)
    if bad:
        return f"it cannot hold {' '.join(repr(c) for c in bad)}"
    if name.startswith("_") or name.endswith((".", "-")):
        return "it cannot begin with '_' or end with '.' or '-'"
    return None


def _network_problem(name: str, limit: int, least: int = 1) -> str | None:
    if not least <= len(name) <= limit:
        return f"it must be {least} to {limit} characters long"
    if not _NETWORK.fullmatch(name):
        return (
            "it may hold letters, digits, '_', '.' and '-', begin with a letter or digit and end "
            "with a letter, digit or '_'"
        )
    return None


def _group_problem(name: str) -> str | None:
    if not 1 <= len(name) <= 90:
        return "it must be 1 to 90 characters long"
    if not _GROUP.fullmatch(name):
        return "it may hold letters, digits, '_', '(', ')', '-' and '.', and not end with '.'"
    return None


_RULES: dict[str, Callable[[str], str | None]] = {
    "resourcegroups": _group_problem,
    "virtualmachines": lambda name: _compute_problem(name, 64),
    "virtualmachinescalesets": lambda name: _compute_problem(name, 64),
    "disks": lambda name: _network_problem(name, 80),
    "networkinterfaces": lambda name: _network_problem(name, 80),
    "publicipaddresses": lambda name: _network_problem(name, 80),
    "networksecuritygroups": lambda name: _network_problem(name, 80),
    "virtualnetworks": lambda name: _network_problem(name, 64, least=2),
    "subnets": lambda name: _network_problem(name, 80),
}


def name_problem(path: str) -> str | None:
    """Why the resource a PUT on ``path`` would create has a name Azure refuses, or None.

    The name is the path's last segment and its type the one before it; types the emulator
    has no rule for pass.
    """
    segments = path.rstrip("/").split("/")
    if len(segments) < 3:
        return None
    kind, name = segments[-2].lower(), segments[-1]
    rule = _RULES.get(kind)
    if rule is None:
        return None
    problem = rule(name)
    if problem is None:
        return None
    return f"The name '{name[:100]}' is not valid for a resource of type {segments[-2]}: {problem}."
