"""Typed records in versioned JSON files: one store per kind, atomic writes, mode 0600."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import stat
import tempfile
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from azmanagers.config.paths import FILE_MODE, atomic_write_text, ensure_dir, state_dir
from azmanagers.errors import ConfigError

logger = logging.getLogger("azmanagers.state")

KIND_KEY = "kind"
VERSION_KEY = "schema_version"
MAX_NAME_CHARS = 64
"""The longest record name (it names a file; kinds may allow fewer)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the fields of a record of schema N into those of schema N + 1."""


class Record(Protocol):
    """What every record has: a name (its file), a status and when it last changed; and it
    is a dataclass."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def updated_at(self) -> float: ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Kind:
    """One kind of record: its folder under ``state/``, schema version and upgrades.

    ``upgrades[n]`` turns the fields of schema ``n`` into those of ``n + 1``; schema 0 is a
    file without ``kind`` and ``schema_version`` (what a version before the state store wrote).
    """

    name: str
    schema_version: int
    statuses: tuple[str, ...]
    upgrades: Mapping[int, Upgrade] = field(default_factory=dict)
    description: str = ""
    """What such a record is, for messages ("detached VM")."""


def check_name(name: str, what: str = "record", max_chars: int = MAX_NAME_CHARS) -> str:
    """Return ``name`` when it can name a record; else raise a ConfigError saying what to do."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > max_chars:
        raise ConfigError(
            f"{name!r} is not a valid {what} name: use 1 to {max_chars} letters, digits, '-' "
            "and '_', starting with a letter or digit."
        )
    return name


class RecordStore(Generic[R]):
    """The records of one kind, as instances of ``record_type`` (a frozen dataclass)."""

    def __init__(self, kind: Kind, record_type: type[R], root: Path | None = None) -> None:
        self.kind: Kind = kind
        self.record_type: type[R] = record_type
        self._root: Path | None = root
        self._fields: dict[str, dataclasses.Field[Any]] = {
            f.name: f for f in dataclasses.fields(record_type)
        }
        self._types: dict[str, Any] = typing.get_type_hints(record_type)

    @property
    def folder(self) -> Path:
        """Where the records are (``AZMANAGERS_HOME/state/<kind>``, resolved at each use)."""
        return (self._root if self._root is not None else state_dir()) / self.kind.name

    def path(self, name: str) -> Path:
        """The file of the record ``name``."""
        return self.folder / f"{check_name(name, self.kind.description or self.kind.name)}.json"

    def names(self) -> list[str]:
        """The names of the stored records, sorted."""
        folder = self.folder
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if _NAME.fullmatch(p.stem))

    def exists(self, name: str) -> bool:
        """Whether a record ``name`` is stored."""
        return self.path(name).exists()

    def save(self, record: R) -> R:
        """Write ``record`` atomically (mode 0600), stamping ``updated_at``; return it."""
        stamped, text = self._stamped(record)
        atomic_write_text(self.path(record.name), text)
        return stamped

    def create(self, record: R) -> R | None:
        """Write ``record`` only if no record of its name exists; return it as written, or
        None when the name is taken (the record there is left as it is).

        The whole file appears at once (written aside, then hard-linked into place), so two
        processes creating the same name cannot both succeed nor see half a record.
        """
        stamped, text = self._stamped(record)
        path = self.path(record.name)
        folder = ensure_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".new")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return stamped

    def _stamped(self, record: R) -> tuple[R, str]:
        if record.status not in self.kind.statuses:
            raise ValueError(f"{record.status!r} is not a status of a {self.kind.name} record")
        stamped = dataclasses.replace(record, updated_at=time.time())
        data = {
            KIND_KEY: self.kind.name,
            VERSION_KEY: self.kind.schema_version,
            **dataclasses.asdict(stamped),
        }
        return stamped, json.dumps(data, indent=1, sort_keys=True)

    def load(self, name: str) -> R | None:
        """Read the record ``name`` (upgrading an older schema); None when there is none."""
        path = self.path(name)
        try:
            with open(path, encoding="utf-8") as handle:
                self._make_private(path, handle.fileno())
                text = handle.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}. Fix or delete the file.") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._bad(path, f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise self._bad(path, "not a JSON object")
        return self._from_json(path, data)

    def delete(self, name: str, only: Callable[[R], bool] | None = None) -> None:
        """Delete the record ``name`` (nothing when there is none).

        With ``only``, delete it only when ``only(record)`` holds for the record stored now
        (a call cleaning up after itself deletes its own record, not one written since); a
        record that cannot be read is then kept.
        """
        if only is not None:
            try:
                found = self.load(name)
            except ConfigError:
                return
            if found is None or not only(found):
                return
        self.path(name).unlink(missing_ok=True)

    def _make_private(self, path: Path, fd: int) -> None:
        """A record holds secrets: one that others may read or write is made 0600 (warned)."""
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, FILE_MODE)
            logger.warning(
                "%s had mode %04o: others could read it (it may hold a token); made it 0600",
                path,
                mode,
            )

    def _bad(self, path: Path, why: str) -> ConfigError:
        what = self.kind.description or f"{self.kind.name} record"
        return ConfigError(f"{path} is not a {what} record: {why}. Fix or delete the file.")

    def _from_json(self, path: Path, data: dict[str, Any]) -> R:
        version = data.pop(VERSION_KEY, 0)
        kind = data.pop(KIND_KEY, self.kind.name if version == 0 else None)
        if kind != self.kind.name:
            raise self._bad(path, f"its kind is {kind!r}, not {self.kind.name!r}")
        if not isinstance(version, int) or version < 0:
            raise self._bad(path, f"schema_version {version!r} is not a version")
        if version > self.kind.schema_version:
            raise ConfigError(
                f"{path} was written by a newer azmanagers (schema {version} of "
                f"{self.kind.name!r} records; this version reads up to "
                f"{self.kind.schema_version}). Upgrade azmanagers (pip install -U azmanagers)."
            )
        while version < self.kind.schema_version:
            upgrade = self.kind.upgrades.get(version)
            if upgrade is None:
                raise self._bad(path, f"schema {version} is too old to read")
            data = upgrade(dict(data))
            version += 1
        unknown = sorted(set(data) - set(self._fields))
        missing = sorted(
            name
            for name, f in self._fields.items()
            if name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if unknown or missing:
            raise self._bad(path, f"unknown fields {unknown}, missing fields {missing}")
        for key, value in data.items():
            if not _has_type(value, self._types[key]):
                raise self._bad(path, f"{key} = {value!r} is not a {self._types[key]}")
        if data.get("status") not in self.kind.statuses:
            raise self._bad(path, f"status {data.get('status')!r} is unknown")
        if data.get("name") != path.stem:
            raise self._bad(
                path,
                f"it names {data.get('name')!r}, but a record is read only from the file of "
                f"its own name ({data.get('name')}.json; a copy is not a record)",
            )
        return self.record_type(**data)


def _has_type(value: object, expected: Any) -> bool:
    """Whether a JSON value fits a field's type (scalars, optionals, lists, dicts)."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected in (str, bool):
        return isinstance(value, expected)
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return True
