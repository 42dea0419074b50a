"""The file:// on-disk layout: link-free paths, SHA-256 sidecars, their lock, atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import stat as statmod
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from azmanagers.errors import (
    ConfigError,
    IntegrityError,
    StorageAccessError,
    StorageNotFoundError,
)
from azmanagers.storage.base import ObjectInfo, check_key, is_key, local_root
from azmanagers.storage.files import open_making_folder, sweep
from azmanagers.storage.hashing import MALFORMED, read_recorded

META_DIR = ".azm-meta"
"""Folder under the root holding one sidecar per object: "<sha256 hex> <size>"."""

LOCK_NAME = ".azm-lock"
"""File in META_DIR that writers flock (exclusive) while they swap an object and its sidecar,
and readers (shared) while they open an object and read its sidecar."""

TEMP_PREFIX = ".azm-tmp-"
"""Temp files (renamed into place when complete) start with this; never listed."""

TEMP_MAX_AGE_S = 3600.0
"""Temp files older than this, left by a killed put, are removed by the next put in that
folder (once per folder per LocalStorage)."""

_TEMP_TOKEN = os.urandom(4).hex()
"""Part of every temp name this process makes (with its pid and a counter): unique without
the random-name retries of ``tempfile.mkstemp``; ``O_EXCL`` still guards against a clash."""
_TEMP_COUNT = itertools.count()


class SidecarFolder:
    """A folder of objects, each with its sidecar ``<root>/.azm-meta/<key>`` kept in step.

    The base of LocalStorage (which adds the Storage calls and their checks): paths that
    never follow links, the sidecar lock, reading and checking sidecars, the atomic write of
    an object with its sidecar, and walking and pruning folders.
    """

    def __init__(self, root: Path) -> None:
        self.root = local_root(str(root))
        self.url = self.root.as_uri()
        self._lock = threading.Lock()
        self._swept: set[str] = set()
        self._real_root = ""

    def url_for(self, key: str) -> str:
        """Return ``url + "/" + key``."""
        return f"{self.url}/{check_key(key)}"

    def _real_str(self) -> str:
        """``realpath(root)``, resolved once per instance (the root itself may be a link)."""
        if not self._real_root:
            self._real_root = os.path.realpath(self.root)
        return self._real_root

    def _real(self) -> Path:
        return Path(self._real_str())

    def _inside_str(self, rel: str, key: str) -> str:
        """Return ``realpath(root)/rel``; StorageAccessError when a part of it is a link.

        Only the parts below the root are looked at (one ``lstat`` each, up to the first that
        does not exist): what ``realpath`` would find, without walking the root's own parents.
        """
        real = self._real_str()
        path = real
        for part in rel.split("/"):
            if not part:
                continue
            path = f"{path}/{part}"
            try:
                mode = os.lstat(path).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return f"{real}/{rel.strip('/')}"
            if statmod.S_ISLNK(mode):
                raise StorageAccessError(
                    f"{self.url_for(key)} is reached through a link (symlink) in the storage "
                    "folder; file:// storage never follows links, remove the link"
                )
        return path

    def _inside(self, rel: str, key: str) -> Path:
        """``_inside_str`` as a Path."""
        return Path(self._inside_str(rel, key))

    def _path(self, key: str) -> Path:
        return self._inside(key, key)

    def _meta(self, key: str) -> Path:
        return self._inside(f"{META_DIR}/{key}", key)

    @contextlib.contextmanager
    def _locked(self, *, shared: bool) -> Iterator[None]:
        """Hold the root's sidecar lock (readers: shared, and only when it exists)."""
        lock = f"{self._real_str()}/{META_DIR}/{LOCK_NAME}"
        try:
            if shared:
                fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
            else:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                fd, _made = open_making_folder(lock, flags, self._real())
        except FileNotFoundError:
            if not shared:
                raise
            yield  # no sidecar was ever written through us: nothing to keep in step
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _recorded(self, key: str, size: int) -> str | None:
        """Return the sidecar's hash, None when there is none, MALFORMED when it does not fit."""
        try:
            text = self._meta(key).read_text()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except (UnicodeDecodeError, ValueError):
            return MALFORMED
        parts = text.split()
        if len(parts) != 2 or parts[1] != str(size):
            return MALFORMED
        return read_recorded(parts[0])

    def _info(self, key: str, st: os.stat_result, recorded: str | None) -> ObjectInfo:
        sha = None if recorded == MALFORMED else recorded
        return ObjectInfo(key=key, size=st.st_size, sha256=sha, modified=st.st_mtime)

    def _sweep(self, folder: str, *, made: bool = False) -> None:
        """Remove old temps from ``folder`` once per instance (none in a folder just made)."""
        with self._lock:
            if folder in self._swept:
                return
            self._swept.add(folder)
        if not made:
            sweep(Path(folder), TEMP_PREFIX, TEMP_MAX_AGE_S)

    def _temp(self, folder: str, key: str, data: bytes = b"") -> str:
        """Create a fresh temp file in ``folder`` (made when missing) holding ``data``."""
        name = f"{folder}/{TEMP_PREFIX}{_TEMP_TOKEN}-{os.getpid()}-{next(_TEMP_COUNT)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd, made = open_making_folder(name, flags, self._real())
        except (FileExistsError, NotADirectoryError) as exc:
            raise ConfigError(
                f"{self.url_for(key)}: a part of the key is an object, not a folder; file:// "
                "cannot keep both 'a' and 'a/b'"
            ) from exc
        self._sweep(folder, made=made)
        try:
            if data:
                os.write(fd, data)
        finally:
            os.close(fd)
        return name

    def _write(self, key: str, fill: Callable[[str], str]) -> ObjectInfo:
        """Write ``key`` through a temp file (``fill(temp)`` returns its SHA-256) and commit.

        Folders are made only when a temp file cannot be created for want of them.
        """
        target = self._inside_str(key, key)
        meta = self._inside_str(f"{META_DIR}/{key}", key)
        temps: list[str] = []
        try:
            temps.append(self._temp(os.path.dirname(target), key))
            digest = fill(temps[0])
            st = os.stat(temps[0])
            line = f"{digest} {st.st_size}\n".encode()
            temps.append(self._temp(os.path.dirname(meta), key, line))
            with self._locked(shared=False):
                # a folder there (the key holds other keys) is refused just below
                with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    os.unlink(meta)
                try:
                    os.replace(temps[0], target)
                except (IsADirectoryError, NotADirectoryError) as exc:
                    raise ConfigError(
                        f"{self.url_for(key)} is a folder here (it holds other keys); file:// "
                        "cannot keep both 'a' and 'a/b'"
                    ) from exc
                os.replace(temps[1], meta)
            temps.clear()  # both renamed into place: nothing left to remove
        finally:
            for temp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
        return self._info(key, st, digest)

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[tuple[BinaryIO, os.stat_result, str | None]]:
        """Open ``key`` and read its sidecar as one consistent pair (under the shared lock)."""
        source = self._path(key)
        with self._locked(shared=True):
            try:
                reader = open(source, "rb")  # noqa: SIM115 (closed below)
            except (IsADirectoryError, NotADirectoryError) as exc:
                raise StorageNotFoundError(f"{self.url_for(key)}: no such object") from exc
            try:
                st = os.fstat(reader.fileno())
                recorded = self._recorded(key, st.st_size)
            except BaseException:
                reader.close()
                raise
        with reader:
            yield reader, st, recorded

    def _verified(self, key: str, recorded: str | None, got: str | None) -> None:
        if recorded == MALFORMED:
            raise IntegrityError(
                f"{self.url_for(key)}: its SHA-256 sidecar does not fit the object (other size "
                "or not a hash); the object was changed outside azmanagers: store it again"
            )
        if recorded is not None and got != recorded:
            raise IntegrityError(
                f"{self.url_for(key)}: SHA-256 {got} does not match the recorded {recorded}"
            )

    def _walk(self, folder: Path, rel: str, out: list[tuple[str, os.stat_result]]) -> None:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            key = f"{rel}{entry.name}"
            if entry.is_symlink() or not is_key(key):
                continue  # links, our .azm- names and names no call accepts
            if entry.is_dir(follow_symlinks=False):
                self._walk(Path(entry.path), f"{key}/", out)
            elif entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    out.append((key, entry.stat(follow_symlinks=False)))

    def _prune(self, folder: Path, stop: Path) -> None:
        """Remove empty folders from ``folder`` up to (not including) ``stop``."""
        while folder != stop and stop in folder.parents:
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = folder.parent
