"""The local provider's records on disk: ``pool.json`` and each instance's ``instance.json``."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azmanagers.config.paths import atomic_write_json, atomic_write_text, ensure_dir, read_json
from azmanagers.errors import ConfigError, ProviderError
from azmanagers.providers.base import BootSpec, PoolSpec
from azmanagers.providers.local import procvm

POOL_FILE = "pool.json"
INSTANCE_FILE = "instance.json"
_INSTANCE_KEYS = {"id": str, "pid": int, "create_time": float, "created_at": float}


@dataclass(frozen=True)
class Unreadable:
    """An instance folder whose record cannot be read: the folder, the record, and why."""

    folder: Path
    path: str
    reason: str


def make_pool(pool_dir: Path, spec: PoolSpec, render: Callable[[BootSpec], str]) -> None:
    """Make a pool's folder whole (boot script, ``pool.json``) or not at all.

    It is built in a temporary folder beside it and renamed, so no pool folder is ever
    without its ``pool.json`` (which gc would never see).

    Raises
    ------
    ProviderError
        The boot script cannot be rendered or written, or the folder cannot be made.
    """
    pools = ensure_dir(pool_dir.parent)
    made = Path(tempfile.mkdtemp(dir=pools, prefix=f".{spec.name}.", suffix=".new"))
    try:
        (made / "instances").mkdir(mode=0o700)
        (made / "logs").mkdir(mode=0o700)
        atomic_write_text(made / procvm.BOOT_SCRIPT_NAME, render(spec.boot))
        atomic_write_json(
            made / POOL_FILE,
            {
                "name": spec.name,
                "tags": dict(spec.tags),
                "capacity": 0,
                "next_index": 0,
                "max_instances": spec.max_instances,
                "created_at": time.time(),
            },
        )
        shutil.rmtree(pool_dir, ignore_errors=True)  # a leftover without pool.json
        made.rename(pool_dir)
    except (OSError, ValueError) as exc:  # UnicodeEncodeError too: a lone surrogate
        shutil.rmtree(made, ignore_errors=True)
        raise ProviderError(f"cannot create local pool {spec.name!r}: {exc}") from exc


def _is_a(value: object, kind: type) -> bool:
    """Tell whether a JSON value is of ``kind`` (a whole number counts as a float)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def read_instance(folder: Path) -> dict[str, Any] | None:
    """Return an instance's record; None while it has none (it is being started).

    Raises
    ------
    ConfigError
        The record is not UTF-8 JSON, not an object, or lacks a key of the right type.
    """
    path = folder / INSTANCE_FILE
    info = read_json(path)
    if info is None and not path.exists():
        return None
    if not isinstance(info, dict) or not all(
        _is_a(info.get(key), kind) for key, kind in _INSTANCE_KEYS.items()
    ):
        raise ConfigError(
            f"{path} is not an instance record (a JSON object with {', '.join(_INSTANCE_KEYS)})."
        )
    return info


def instance_records(pool_dir: Path) -> tuple[list[dict[str, Any]], list[Unreadable]]:
    """Return a pool's readable instance records and the instances whose record is not."""
    readable, unreadable = [], []
    instances_dir = pool_dir / "instances"
    for entry in sorted(instances_dir.iterdir()) if instances_dir.is_dir() else []:
        try:
            info = read_instance(entry)
        except ConfigError as exc:
            unreadable.append(Unreadable(entry, str(entry / INSTANCE_FILE), str(exc)))
            continue
        if info is not None:
            readable.append(info)
    return readable, unreadable
