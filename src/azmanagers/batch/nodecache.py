"""A node's cache of staged inputs and packages, by content hash: each is fetched once per node."""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from azmanagers.batch.staging import InputRef, TreeFile, parse_manifest
from azmanagers.config.paths import node_work_dir
from azmanagers.errors import BatchError
from azmanagers.storage.base import Storage


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

    Every fetch takes a per-hash file lock, so runs that start together on one node (threads
    of one worker or several worker processes) fetch a given content once.
    """

    root: Path = field(default_factory=node_dir)
    fetched_files: int = 0
    fetched_bytes: int = 0

    @property
    def shared_dir(self) -> Path:
        path = self.root / "shared"
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    def file(self, storage: Storage, key: str, sha256: str) -> Path:
        """The cached copy of the file stored at ``key`` (fetched and verified if missing)."""
        path = self.root / "cache" / sha256[:2] / sha256
        if path.exists():
            return path
        with _locked(self.root / "locks" / f"{sha256}.lock"):
            if path.exists():
                return path
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{sha256}.part")
            info = storage.get_file(key, tmp)
            if info.sha256 not in (None, sha256):
                tmp.unlink(missing_ok=True)
                raise BatchError(f"{key} holds {info.sha256}, expected {sha256}")
            tmp.chmod(0o444)
            os.replace(tmp, path)
            self.fetched_files += 1
            self.fetched_bytes += info.size
        return path

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
        if not ref.tree:
            _put(self.file(storage, ref.key, ref.sha256), target, ref.mode, link=link)
            return
        for item, cached in self.tree(storage, ref):
            _put(cached, target / _safe_rel(item.rel), item.mode, link=link)

    def package(self, storage: Storage, ref: InputRef, name: str, version: str) -> Path:
        """The folder a package is unpacked in (once per node and content)."""
        folder = self.root / "packages" / name / f"{version}-{ref.sha256[:12]}"
        done = folder / ".azm-complete"
        if done.exists():
            return folder
        with _locked(self.root / "locks" / f"pkg-{ref.sha256}.lock"):
            if done.exists():
                return folder
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, mode=0o755)
            if ref.tree:
                self.place(storage, ref, folder, link=False)
            else:
                _unpack(self.file(storage, ref.key, ref.sha256), folder, ref.source)
            done.touch()
        return folder


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
    """Unpack a zip or tar archive (known by its content) safely, or place a single file."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _safe_rel(member.rstrip("/") or ".")
                zf.extractall(folder)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(folder, filter="data")
        else:
            target = folder / (source.rstrip("/").rsplit("/", 1)[-1] or "package")
            shutil.copyfile(archive, target)
            target.chmod(0o755)
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
        raise BatchError(f"package {source} could not be unpacked: {exc}") from exc
