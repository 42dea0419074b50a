"""A node's cache of staged inputs and packages, by content hash: each is fetched once per node."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from azmanagers.batch.packages import check_archive
from azmanagers.batch.staging import InputRef, TreeFile, parse_manifest
from azmanagers.config.paths import node_work_dir
from azmanagers.errors import BatchError
from azmanagers.storage.base import Storage
from azmanagers.storage.hashing import sha256_file

MARKER = ".azm-complete"
"""Next to a package folder: it was unpacked completely, with the fingerprint it had then."""
STAMP_SETTLE_S = 0.1
"""A cached copy changed more recently than this when it is checked gets no stamp yet: file
times advance in clock ticks (a few ms), and a change in the tick of the last one could leave
size, times and inode as they were. Its next reuse hashes it again."""
SEEN_MAX = 100_000
"""Hashes of copied inputs this process remembers having fetched (then forgets them all)."""
_SEEN: set[str] = set()
"""Contents this process placed once: a second use of one goes through the cache."""
_MADE: set[Path] = set()
"""Folders this process made already."""


def node_dir() -> Path:
    """This node's batch folder (created 0700)."""
    return node_work_dir()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class NodeCache:
    """Files by SHA-256 under ``<node>/cache``; packages unpacked under ``<node>/packages``.

    Every fetch takes a file lock (one per first two hex digits of the hash: at most 256 lock
    files per node, not one per content), so runs that start together on one node (threads
    of one worker or several worker processes) fetch a given content once.
    """

    root: Path = field(default_factory=node_dir)
    fetched_files: int = 0
    fetched_bytes: int = 0

    @functools.cached_property
    def shared_dir(self) -> Path:
        path = self.root / "shared"
        if path not in _MADE:
            path.mkdir(exist_ok=True, mode=0o700)
            _MADE.add(path)
        return path

    def file(self, storage: Storage, key: str, sha256: str) -> Path:
        """The cached copy of the file stored at ``key``, whose content is ``sha256``.

        Fetched when missing, and checked: bytes the storage could not verify against
        ``sha256`` are hashed here, and refused (``BatchError``, nothing cached) when they
        differ. A cached copy is read-only (0444) but runs see it through links and may change
        it, so its (size, mtime, ctime, inode) is kept in a stamp; when they differ on reuse
        (or there is no stamp yet), the copy is hashed again, and fetched again unless it is
        still ``sha256``. The stamp is written at the first reuse, not at the fetch: most
        inputs are used once per node, and a missing stamp costs only that one hash.

        The copy is stat'ed (lstat) before and after it is hashed: a copy changed or replaced
        meanwhile is fetched again, and the stamp holds the identity the hash was taken of,
        never a later one. A copy changed less than ``STAMP_SETTLE_S`` before it was checked
        gets no stamp yet (a change in the same clock tick could keep every stat field).
        """
        path = self.root / "cache" / sha256[:2] / sha256
        stamp = path.with_name(f"{sha256}.stamp")
        if _stamp_matches(path, stamp):
            return path
        with _locked(self.root / "locks" / f"{sha256[:2]}.lock"):
            if _stamp_matches(path, stamp):
                return path
            stamp.unlink(missing_ok=True)
            checked_at_ns = time.time_ns()
            hashed = _verified(path, sha256)
            if hashed is not None:  # changed in mode or time only: the content is right
                if hashed.st_ctime_ns < checked_at_ns - int(STAMP_SETTLE_S * 1e9):
                    _write_json(stamp, {"stat": _identity(hashed)})
                return path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{sha256}.part")
            try:
                self._fetch_checked(storage, key, sha256, tmp)
                tmp.chmod(0o444)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def _fetch_checked(self, storage: Storage, key: str, sha256: str, local: Path) -> None:
        """Fetch ``key`` to ``local`` and check it is ``sha256`` (hashed here when the storage
        could not verify it); ``BatchError``, and nothing left at ``local``, when it is not."""
        info = storage.get_file(key, local)
        if info.sha256 != sha256 and (got := sha256_file(local)) != sha256:
            local.unlink(missing_ok=True)
            raise BatchError(
                f"{key} holds content with SHA-256 {got}, expected {sha256}: it was "
                "changed after the job was staged; submit the job again to stage it."
            )
        self.fetched_files += 1
        self.fetched_bytes += info.size

    def tree(self, storage: Storage, ref: InputRef) -> list[tuple[TreeFile, Path]]:
        """Each file of a staged folder with its cached copy."""
        manifest = parse_manifest(self.file(storage, ref.key, ref.sha256).read_bytes())
        prefix = ref.key.split("inputs/trees/", 1)[0]
        return [
            (f, self.file(storage, f"{prefix}inputs/sha256/{f.sha256[:2]}/{f.sha256}", f.sha256))
            for f in manifest
        ]

    def place(self, storage: Storage, ref: InputRef, run_dir: Path, *, link: bool) -> None:
        """Put an input in ``run_dir`` at ``ref.dest``: copies, or read-only links when ``link``."""
        target = run_dir / ref.dest if ref.dest else run_dir
        if not ref.tree and not link and self._first_use(ref.sha256):
            self._fetch_into(storage, ref, target)
            return
        if not ref.tree:
            _put(self.file(storage, ref.key, ref.sha256), target, ref.mode, link=link)
            return
        for item, cached in self.tree(storage, ref):
            _put(cached, target / _safe_rel(item.rel), item.mode, link=link)

    def _first_use(self, sha256: str) -> bool:
        """Whether a copied input's content is new to this process and not in the cache.

        Most per-run inputs are used once: those go straight into the run folder (one file
        made, not a cached copy, its lock and a copy of it); a content seen again, or cached
        already, goes through the cache and is fetched once per node from then on.
        """
        if sha256 in _SEEN:
            return False
        if len(_SEEN) >= SEEN_MAX:
            _SEEN.clear()
        _SEEN.add(sha256)
        return not (self.root / "cache" / sha256[:2] / sha256).exists()

    def _fetch_into(self, storage: Storage, ref: InputRef, target: Path) -> None:
        """Fetch a (single-file) input straight to ``target``, checked as ``file`` checks."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        self._fetch_checked(storage, ref.key, ref.sha256, target)
        target.chmod((ref.mode & 0o777) | 0o600)

    def package(self, storage: Storage, ref: InputRef, name: str, version: str) -> Path:
        """The folder a package is unpacked in (once per node and content).

        Its files are made read-only, and its fingerprint (every path with its size, times and
        mode) is kept in a marker next to it; when a run changed, added or removed anything,
        the next use unpacks it again.
        """
        folder = self.root / "packages" / name / f"{version}-{ref.sha256[:12]}"
        marker = folder.with_name(folder.name + MARKER)
        if _marker_matches(folder, marker):
            return folder
        with _locked(self.root / "locks" / f"pkg-{ref.sha256}.lock"):
            if _marker_matches(folder, marker):
                return folder
            marker.unlink(missing_ok=True)
            _remove(folder)
            folder.mkdir(parents=True, mode=0o755)
            try:
                if ref.tree:
                    self.place(storage, ref, folder, link=False)
                else:
                    _unpack(self.file(storage, ref.key, ref.sha256), folder, ref.source)
                _seal(folder)
            except BaseException:
                _remove(folder)
                raise
            paths = package_paths(folder)
            _write_json(marker, {"paths": paths, "fingerprint": fingerprint(folder, paths)})
        return folder


def _write_json(path: Path, data: Mapping[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode]


def _verified(path: Path, sha256: str) -> os.stat_result | None:
    """The lstat of ``path`` (read-only now) if it is a file whose content is ``sha256`` and
    that was not changed or replaced while it was hashed; else None (fetch it again)."""
    try:
        first = os.lstat(path)
        if not stat.S_ISREG(first.st_mode):
            return None
        if stat.S_IMODE(first.st_mode) != 0o444:
            path.chmod(0o444)  # before the stats: a chmod changes the ctime
        before = os.lstat(path)
        digest = sha256_file(path)
        after = os.lstat(path)
    except OSError:
        return None
    same = _identity(after) == _identity(before)
    return before if digest == sha256 and same and stat.S_ISREG(before.st_mode) else None


def _stamp_matches(path: Path, stamp: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and _read_json(stamp).get("stat") == _identity(st)


def package_paths(folder: Path) -> list[str]:
    """Every non-folder path under ``folder`` (relative), sorted: what a package holds."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        found += [Path(parent, n).relative_to(folder).as_posix() for n in sorted(names)]
    return found


def fingerprint(folder: Path, paths: list[str] | None = None) -> str:
    """A hash of ``paths`` (default: all) under ``folder`` with type, size, times and mode.

    Files a run adds (``__pycache__``, logs) are not the package's and do not count: a
    package is unpacked again only when one of its own files changed or went away.
    """
    rows = []
    for rel in package_paths(folder) if paths is None else paths:
        try:
            st = os.lstat(folder / rel)
        except OSError:
            rows.append(f"{rel}\0missing")
            continue
        rows.append(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}")
    return hashlib.sha256("\n".join(rows).encode("utf-8", "surrogateescape")).hexdigest()


def _marker_matches(folder: Path, marker: Path) -> bool:
    if not marker.exists() or not folder.is_dir():
        return False
    data = _read_json(marker)
    paths = data.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return False
    return data.get("fingerprint") == fingerprint(folder, paths)


def _seal(folder: Path) -> None:
    """Make a package's files read-only (folders stay writable by us, to remove them)."""
    for parent, dirs, names in os.walk(folder):
        for name in dirs:
            path = Path(parent, name)
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o700)
        for name in names:
            path = Path(parent, name)
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.lstat().st_mode) & ~0o222)


def _remove(folder: Path) -> None:
    if not folder.exists() and not folder.is_symlink():
        return
    for parent, dirs, _names in os.walk(folder):
        for name in dirs:
            path = Path(parent, name)
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.lstat().st_mode) | 0o700)
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        raise BatchError(f"{folder} could not be removed to unpack it again; remove it by hand.")


def _safe_rel(rel: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or any(p in ("..", "") for p in parts):
        raise BatchError(f"a staged path {rel!r} escapes its folder; the manifest is damaged.")
    return Path(*parts)


def _put(cached: Path, target: Path, mode: int, *, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if link:
        target.symlink_to(cached)
    else:
        shutil.copyfile(cached, target)
        target.chmod((mode & 0o777) | 0o600)


def _unpack(archive: Path, folder: Path, source: str) -> None:
    """Unpack a zip or tar archive (known by its content) safely, or place a single file.

    Members are checked first (``check_archive``: nothing outside the folder, a size cap), and
    the disk must have room for them. Zip members keep their Unix modes (group and other write
    bits dropped, as tar's "data" filter does); zip links are made when they stay inside.
    """
    try:
        if zipfile.is_zipfile(archive) or tarfile.is_tarfile(archive):
            total = check_archive(archive, source, BatchError)
            free = shutil.disk_usage(folder).free
            if total > free:
                raise BatchError(
                    f"package {source} would unpack to {total:,} bytes; this node has "
                    f"{free:,} bytes free: use bigger disks, or a smaller package."
                )
        if zipfile.is_zipfile(archive):
            _unzip(archive, folder, source)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(folder, filter="data")
        else:
            target = folder / (source.rstrip("/").rsplit("/", 1)[-1] or "package")
            shutil.copyfile(archive, target)
            target.chmod(0o755)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise BatchError(f"package {source} could not be unpacked: {exc}") from exc


def _unzip(archive: Path, folder: Path, source: str) -> None:
    root = os.path.realpath(folder)
    links: list[Path] = []

    def inside(path: str | Path, name: str) -> None:
        real = os.path.realpath(path)
        if real != root and not real.startswith(root + os.sep):
            raise BatchError(
                f"package {source} could not be unpacked: member {name!r} leads outside its "
                "folder through a link; rebuild the archive with links that stay inside it."
            )

    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if not parts:
                continue
            target = folder.joinpath(*parts)
            inside(target.parent, info.filename)
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            if stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", "surrogateescape")
                inside(target.parent / link, info.filename)
                target.symlink_to(link)
                links.append(target)
            elif info.is_dir():
                inside(target, info.filename)
                target.mkdir(exist_ok=True)
            else:
                with zf.open(info) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, 2**20)
                perm = mode & 0o755 if mode & 0o777 else 0o644
                target.chmod(perm | 0o600)
    for made in links:  # links made later can redirect earlier ones
        inside(made, made.relative_to(folder).as_posix())
