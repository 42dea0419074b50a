"""Application packages registered in a storage root (``azm batch package add|list``)."""

from __future__ import annotations

import gzip
import json
import re
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from azmanagers.errors import ConfigError, StorageNotFoundError
from azmanagers.storage.base import Storage
from azmanagers.storage.hashing import sha256_file

PACKAGES = "_packages"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class PackageInfo:
    """A registered package: name, version, the file or folder it was made from, its hash."""

    name: str
    version: str
    source: str
    sha256: str
    size: int
    created: float
    key: str


def check_part(value: str, what: str) -> str:
    if not isinstance(value, str) or not _PART.fullmatch(value):
        raise ConfigError(
            f"package {what} {value!r} is not valid: use 1 to 64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (e.g. 'dsm2' '8.2')."
        )
    return value


def _prefix(name: str, version: str) -> str:
    return f"{PACKAGES}/{check_part(name, 'name')}/{check_part(version, 'version')}/"


def add_package(storage: Storage, name: str, version: str, path: str | Path) -> PackageInfo:
    """Register ``path`` (an archive, a single file, or a folder, packed here) as a package.

    Registering the same content again changes nothing; other content under a name and
    version already registered is refused (versions are immutable: add a new version).
    """
    prefix = _prefix(name, version)
    local = Path(path).expanduser()
    if not local.exists():
        raise ConfigError(f"package path {path} does not exist; give an archive or a folder.")
    with tempfile.TemporaryDirectory(prefix="azm-package-") as tmp:
        archive = _pack(local, Path(tmp)) if local.is_dir() else local
        digest = sha256_file(archive)
        existing = package_info(storage, name, version)
        if existing is not None:
            if existing.sha256 != digest:
                raise ConfigError(
                    f"package {name} {version} is already registered with other content "
                    f"({existing.source}); versions do not change: add it as a new version."
                )
            return existing
        key = f"{prefix}{archive.name}"
        info = storage.put_file(archive, key, sha256=digest)
    record = PackageInfo(name, version, archive.name, digest, info.size, time.time(), key)
    storage.put_bytes(f"{prefix}package.json", json.dumps(asdict(record), indent=1).encode())
    return record


def _pack(folder: Path, tmp: Path) -> Path:
    """A folder as a reproducible .tar.gz (sorted, owner and times zeroed)."""
    archive = tmp / f"{folder.name}.tar.gz"

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for path in sorted(folder.rglob("*")):
            tar.add(
                path, arcname=path.relative_to(folder).as_posix(), recursive=False, filter=clean
            )
    return archive


def package_info(storage: Storage, name: str, version: str) -> PackageInfo | None:
    try:
        raw = storage.get_bytes(f"{_prefix(name, version)}package.json")
    except StorageNotFoundError:
        return None
    return PackageInfo(**json.loads(raw))


def registered_source(storage: Storage, name: str, version: str) -> str:
    """The storage URL to stage a registered package from (``ConfigError`` if unknown)."""
    info = package_info(storage, name, version)
    if info is None:
        known = ", ".join(f"{p.name} {p.version}" for p in list_packages(storage)) or "none"
        raise ConfigError(
            f"package {name} {version} is not registered in {storage.url} (registered: "
            f"{known}); run `azm batch package add {name} {version} PATH`, or give its path."
        )
    return storage.url_for(info.key)


def list_packages(storage: Storage) -> list[PackageInfo]:
    """Every registered package, by name and version."""
    found = []
    for name in storage.list_dirs(f"{PACKAGES}/"):
        for version in storage.list_dirs(f"{PACKAGES}/{name}/"):
            info = package_info(storage, name, version)
            if info is not None:
                found.append(info)
    return found
