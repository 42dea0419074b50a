"""Application packages registered in a storage root (``azm batch package add|list``)."""

from __future__ import annotations

import gzip
import json
import posixpath
import re
import stat
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from azmanagers.errors import AzManagersError, ConfigError, StorageNotFoundError
from azmanagers.storage.base import Storage
from azmanagers.storage.hashing import sha256_file

PACKAGES = "_packages"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_UNPACKED_BYTES = 64 * 2**30
"""A package may unpack to at most 64 GiB (the sum of its members' declared sizes)."""
MAX_EXPANSION = 200
"""... and to at most 200 times the size of its archive (a "zip bomb" unpacks to far more) ..."""
EXPANSION_FREE_BYTES = 2**30
"""... unless it unpacks to under 1 GiB: a small archive of well-compressed data is fine."""


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
    version already registered is refused (versions are immutable: add a new version). An
    archive is checked here as a node checks it before unpacking (``check_archive``), so a
    member that would land outside the package folder, or a package too big to unpack, is
    refused now rather than on every node.
    """
    prefix = _prefix(name, version)
    local = Path(path).expanduser()
    if not local.exists():
        raise ConfigError(f"package path {path} does not exist; give an archive or a folder.")
    with tempfile.TemporaryDirectory(prefix="azm-package-") as tmp:
        archive = _pack(local, Path(tmp)) if local.is_dir() else local
        check_archive(archive, f"{name} {version} ({local})")
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


def unpacked_limit(archive_bytes: int) -> int:
    """The most bytes an archive of ``archive_bytes`` may unpack to (see the constants)."""
    return min(MAX_UNPACKED_BYTES, max(MAX_EXPANSION * archive_bytes, EXPANSION_FREE_BYTES))


def check_archive(archive: Path, what: str, error: type[AzManagersError] = ConfigError) -> int:
    """Check a zip or tar archive's members before it is unpacked; their total declared bytes.

    Refused (``ConfigError`` naming ``what`` and the member): an absolute member or one with a
    ``..`` part, a link (symbolic or hard) whose target is absolute or leaves the folder, a
    device or FIFO, and members adding up to more than ``unpacked_limit``. A file that is not
    an archive is a single-file package: 0 (nothing to unpack). ``error`` is the class raised
    (a node raises ``BatchError``: the archive was registered without this check).
    """
    if zipfile.is_zipfile(archive):
        members = _zip_members(archive, error)
    elif tarfile.is_tarfile(archive):
        members = _tar_members(archive, error)
    else:
        return 0
    total = 0
    for name, kind, target, size in members:
        problem = _member_problem(name, kind, target)
        if problem:
            raise error(
                f"package {what}: member {name!r} {problem}; rebuild the archive with relative "
                "paths and links that stay inside it."
            )
        total += size
    limit = unpacked_limit(archive.stat().st_size)
    if total > limit:
        raise error(
            f"package {what} would unpack to {total:,} bytes, over the {limit:,} allowed for a "
            f"{archive.stat().st_size:,}-byte archive (at most {MAX_UNPACKED_BYTES:,} bytes, or "
            f"{MAX_EXPANSION} times the archive when over {EXPANSION_FREE_BYTES:,}); "
            "split it, or put big data in storage and give it as a shared input."
        )
    return total


_Member = tuple[str, str, str, int]
"""(name, kind: file|dir|symlink|hardlink|special, link target, declared bytes)."""


def _zip_members(archive: Path, error: type[AzManagersError]) -> list[_Member]:
    try:
        with zipfile.ZipFile(archive) as zf:
            found = []
            for info in zf.infolist():
                mode = info.external_attr >> 16 if info.create_system == 3 else 0
                if stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8", "surrogateescape")
                    found.append((info.filename, "symlink", target, 0))
                else:
                    kind = "dir" if info.is_dir() else "file"
                    found.append((info.filename, kind, "", info.file_size))
            return found
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as exc:
        raise error(f"archive {archive} could not be read as a zip: {exc}") from exc


def _tar_members(archive: Path, error: type[AzManagersError]) -> list[_Member]:
    try:
        with tarfile.open(archive) as tf:
            found = []
            for info in tf:
                if info.issym() or info.islnk():
                    kind = "symlink" if info.issym() else "hardlink"
                    found.append((info.name, kind, info.linkname, 0))
                elif info.isdir() or info.isfile():
                    found.append((info.name, "dir" if info.isdir() else "file", "", info.size))
                else:
                    found.append((info.name, "special", "", 0))
            return found
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise error(f"archive {archive} could not be read as a tar: {exc}") from exc


def _escapes(path: str) -> bool:
    return path.startswith("/") or ".." in PurePosixPath(posixpath.normpath(path)).parts


def _member_problem(name: str, kind: str, target: str) -> str:
    """Why a member may not be unpacked ("" when it may)."""
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in PurePosixPath(name).parts or "\x00" in name:
        return "would be unpacked outside its folder"
    if kind == "special":
        return "is a device or FIFO (only files, folders and links are unpacked)"
    if kind == "symlink" and (
        target.startswith("/") or _escapes(posixpath.join(posixpath.dirname(name), target))
    ):
        return f"is a link to {target!r}, outside its folder"
    if kind == "hardlink" and _escapes(target):
        return f"is a hard link to {target!r}, outside its folder"
    return ""


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
