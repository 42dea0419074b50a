"""The file:// back-end: a folder, with SHA-256 sidecars under <root>/.azm-meta/."""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import os
import stat as statmod
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from azmanagers.errors import (
    ConfigError,
    IntegrityError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
)
from azmanagers.storage.base import (
    Access,
    Grant,
    ObjectInfo,
    check_key,
    check_prefix,
    check_ttl,
    check_unique,
    dir_prefix,
    is_key,
    local_root,
    parallel_map,
)
from azmanagers.storage.files import DIR_MODE, copy_hashing, download_to, makedirs, os_errors, sweep
from azmanagers.storage.hashing import MALFORMED, is_sha256, read_recorded, sha256_file

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

COPY_THREADS = 8
"""Threads for put_files/get_files (copies release the GIL)."""


class LocalStorage:
    """Objects as files under a folder (``file:///abs/path``).

    Writes go to a temp file in the same folder; files are 0600 and folders 0700. Each
    object's SHA-256 and size sit in ``<root>/.azm-meta/<key>``. Under an exclusive lock
    (LOCK_NAME) a writer removes the old sidecar, renames the new data into place and then
    renames the new sidecar in; readers take the lock shared to open the data and read its
    sidecar. So a sidecar always describes the data next to it, or is missing (a writer was
    killed between the renames, or someone else wrote the file): two racing writers end with
    one writer's matching pair. A sidecar that does not match (size, hash or format) fails a
    verified read with IntegrityError; ``stat``/``list`` then say ``sha256=None``.

    Links (symlinks) inside the root are never followed: a key whose path resolves elsewhere
    than ``realpath(root)/key`` is refused with StorageAccessError, and listings skip links.
    """

    def __init__(self, root: Path, *, access: Access | None = None, create: bool = True) -> None:
        self.root = local_root(str(root))
        self.url = self.root.as_uri()
        self.access = access or Access()
        self._create = create
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._swept: set[Path] = set()

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r}, prefix={self.access.prefix!r})"

    def __enter__(self) -> LocalStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths and sidecars --------------------------------------------------------------
    def url_for(self, key: str) -> str:
        """Return ``url + "/" + key``."""
        return f"{self.url}/{check_key(key)}"

    def _key(self, key: str, *, write: bool, delete: bool = False) -> str:
        check_key(key)
        self.access.check(key, write=write, url=self.url, delete=delete)
        return key

    def _real(self) -> Path:
        return Path(os.path.realpath(self.root))

    def _inside(self, rel: str, key: str) -> Path:
        """Return ``realpath(root)/rel``; StorageAccessError when a link leads elsewhere."""
        real = self._real()
        path = real / rel
        if os.path.realpath(path) != str(path):
            raise StorageAccessError(
                f"{self.url_for(key)} is reached through a link (symlink) in the storage "
                "folder; file:// storage never follows links, remove the link"
            )
        return path

    def _path(self, key: str) -> Path:
        return self._inside(key, key)

    def _meta(self, key: str) -> Path:
        return self._inside(f"{META_DIR}/{key}", key)

    @contextlib.contextmanager
    def _locked(self, *, shared: bool) -> Iterator[None]:
        """Hold the root's sidecar lock (readers: shared, and only when it exists)."""
        lock = self._real() / META_DIR / LOCK_NAME
        try:
            if shared:
                fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
            else:
                makedirs(lock.parent, self._real())
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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

    def _sweep(self, folder: Path) -> None:
        with self._lock:
            if folder in self._swept:
                return
            self._swept.add(folder)
        sweep(folder, TEMP_PREFIX, TEMP_MAX_AGE_S)

    def _write(self, key: str, fill: Callable[[str], str]) -> ObjectInfo:
        """Write ``key`` through a temp file (``fill(temp)`` returns its SHA-256) and commit."""
        target, meta = self._path(key), self._meta(key)
        real = self._real()
        try:
            makedirs(target.parent, real)
            makedirs(meta.parent, real)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ConfigError(
                f"{self.url_for(key)}: a part of the key is an object, not a folder; file:// "
                "cannot keep both 'a' and 'a/b'"
            ) from exc
        self._sweep(target.parent)
        self._sweep(meta.parent)
        temps: builtins.list[str] = []
        try:
            for folder in (target.parent, meta.parent):
                fd, temp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX)
                os.close(fd)
                temps.append(temp)
            digest = fill(temps[0])
            st = os.stat(temps[0])
            Path(temps[1]).write_text(f"{digest} {st.st_size}\n")
            with self._locked(shared=False):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    os.unlink(meta)
                try:
                    os.replace(temps[0], target)
                except (IsADirectoryError, NotADirectoryError) as exc:
                    raise ConfigError(
                        f"{self.url_for(key)} is a folder here (it holds other keys); file:// "
                        "cannot keep both 'a' and 'a/b'"
                    ) from exc
                os.replace(temps[1], meta)
        finally:
            for temp in temps:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
        return self._info(key, st, digest)

    # -- the Storage calls -----------------------------------------------------------------
    def check(self) -> None:
        """Check the root folder exists and is usable (create it 0700 when allowed)."""
        with os_errors(f"storage folder {self.root}"):
            if self._create and not self.root.exists():
                self.root.mkdir(mode=DIR_MODE, parents=True)
            if not self.root.is_dir():
                raise StorageNotFoundError(
                    f"storage folder {self.root} does not exist or is not a folder; create it"
                )
            mode = os.R_OK | os.X_OK | (os.W_OK if self.access.write else 0)
            if not os.access(self.root, mode):
                raise StorageAccessError(
                    f"storage folder {self.root}: no permission to use it; check its owner"
                )

    def put_file(self, local: Path, key: str, *, sha256: str | None = None) -> ObjectInfo:
        """Copy ``local`` to ``key``, unless the object there already has its SHA-256.

        The recorded hash is that of the bytes copied (one pass); a ``sha256`` given that
        differs from them (the file changed, or the value is wrong) is a StorageError.
        """
        self._key(key, write=True)
        local = Path(local)
        if not local.is_file():
            raise ConfigError(f"local file {local} does not exist (or is not a file)")
        if sha256 is not None and not is_sha256(sha256):
            raise ConfigError(f"sha256 {sha256!r}: expected 64 lower-case hex characters")
        with os_errors(f"{self.url_for(key)} from {local}"):
            target = self._path(key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                st = os.stat(target)
                recorded = self._recorded(key, st.st_size)
                same_size = st.st_size == os.stat(local).st_size
                if recorded not in (None, MALFORMED) and same_size:  # noqa: SIM102 (hash last)
                    if (sha256 or sha256_file(local)) == recorded:
                        return self._info(key, st, recorded)

            def fill(temp: str) -> str:
                with open(local, "rb") as reader:
                    got = copy_hashing(reader, temp)
                if sha256 is not None and got != sha256:
                    raise StorageError(
                        f"{self.url_for(key)} from {local}: the file's SHA-256 is {got}, not the "
                        f"{sha256} given (did it change?); nothing was stored"
                    )
                return got

            return self._write(key, fill)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write ``data`` at ``key`` (overwrite, atomic)."""
        self._key(key, write=True)

        def fill(temp: str) -> str:
            Path(temp).write_bytes(data)
            return hashlib.sha256(data).hexdigest()

        with os_errors(self.url_for(key)):
            return self._write(key, fill)

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

    def get_file(self, key: str, local: Path, *, verify: bool = True) -> ObjectInfo:
        """Copy ``key`` to ``local`` (part file + rename), verifying its SHA-256."""
        self._key(key, write=False)
        local = Path(local)
        info: builtins.list[ObjectInfo] = []

        def fill(temp: str) -> None:
            with self._reading(key) as (reader, st, recorded):
                got = copy_hashing(reader, temp)
            if verify:
                self._verified(key, recorded, got)
            info.append(self._info(key, st, recorded))

        with os_errors(f"{self.url_for(key)} to {local}"):
            download_to(local, fill)
        return info[0]

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Return the bytes at ``key``, verified against the recorded SHA-256."""
        self._key(key, write=False)
        with os_errors(self.url_for(key)), self._reading(key) as (reader, _st, recorded):
            data = reader.read()
        if verify:
            self._verified(key, recorded, hashlib.sha256(data).hexdigest())
        return data

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the info of ``key``, or None when there is no object."""
        self._key(key, write=False)
        with os_errors(self.url_for(key)):
            path = self._path(key)
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not statmod.S_ISREG(st.st_mode):
                return None
            return self._info(key, st, self._recorded(key, st.st_size))

    def _walk(self, folder: Path, rel: str, out: builtins.list[tuple[str, os.stat_result]]) -> None:
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

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose keys start with ``prefix``, sorted by key (no links)."""
        check_prefix(prefix)
        self.access.check(prefix, write=False, url=self.url)
        folder = prefix[: prefix.rfind("/") + 1]
        found: builtins.list[tuple[str, os.stat_result]] = []
        with os_errors(f"{self.url}/{prefix}"):
            start = self._inside(folder, folder.rstrip("/")) if folder else self._real()
            self._walk(start, folder, found)
        found.sort(key=lambda item: item[0])
        for key, st in found:
            if key.startswith(prefix):
                yield self._info(key, st, self._recorded(key, st.st_size))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Return the sorted names of the folders directly under ``prefix`` (no links)."""
        folder = dir_prefix(prefix)
        self.access.check(folder, write=False, url=self.url)
        with os_errors(f"{self.url}/{folder}"):
            start = self._inside(folder, folder.rstrip("/")) if folder else self._real()
            try:
                entries = list(os.scandir(start))
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(
                e.name
                for e in entries
                if e.is_dir(follow_symlinks=False) and is_key(folder + e.name)
            )

    def _prune(self, folder: Path, stop: Path) -> None:
        """Remove empty folders from ``folder`` up to (not including) ``stop``."""
        while folder != stop and stop in folder.parents:
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = folder.parent

    def delete(self, key: str) -> None:
        """Delete the object at ``key`` and its sidecar; no object (or a folder) is fine."""
        self._key(key, write=True, delete=True)
        with os_errors(self.url_for(key)):
            path, meta = self._path(key), self._meta(key)
            if os.path.isdir(path):
                return  # a "folder" is no object, as on az://
            with self._locked(shared=False):
                for gone in (meta, path):
                    with contextlib.suppress(
                        FileNotFoundError, NotADirectoryError, IsADirectoryError
                    ):
                        os.unlink(gone)
            self._prune(path.parent, self._real())
            self._prune(meta.parent, self._real() / META_DIR)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="azm-file")
            return self._pool

    def put_files(self, pairs: Sequence[tuple[Path, str]]) -> builtins.list[ObjectInfo]:
        """Copy many ``(local, key)`` pairs in parallel; infos in the order given."""
        for _local, key in pairs:
            self._key(key, write=True)
        check_unique([key for _local, key in pairs])
        return parallel_map(self._executor(), lambda p: self.put_file(p[0], p[1]), pairs)

    def get_files(
        self, pairs: Sequence[tuple[str, Path]], *, verify: bool = True
    ) -> builtins.list[ObjectInfo]:
        """Copy many ``(key, local)`` pairs in parallel; infos in the order given."""
        for key, _local in pairs:
            self._key(key, write=False)
        return parallel_map(
            self._executor(), lambda p: self.get_file(p[0], p[1], verify=verify), pairs
        )

    def grant(self, prefix: str, *, ttl_s: float, write: bool) -> Grant:
        """Return a Grant for keys under ``prefix``.

        The token is empty: a ``file://`` grant is good on this machine (or where the same
        folder is mounted) and its limits are enforced by the client, not by the file system.
        """
        scope = dir_prefix(prefix)
        self.access.check(scope, write=write, url=self.url)
        expires = time.time() + check_ttl(ttl_s)
        if self.access.expires_at is not None:
            expires = min(expires, self.access.expires_at)
        return Grant(url=self.url, prefix=scope, expires_at=expires, write=write)

    def close(self) -> None:
        """Stop the copy threads."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
