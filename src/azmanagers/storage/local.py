"""The file:// back-end: a folder, with SHA-256 sidecars under <root>/.azm-meta/."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import stat as statmod
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azmanagers.errors import (
    ConfigError,
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
    parallel_map,
)
from azmanagers.storage.files import DIR_MODE, copy_hashing, download_to, os_errors
from azmanagers.storage.hashing import MALFORMED, is_sha256, sha256_file
from azmanagers.storage.local_meta import META_DIR, SidecarFolder

COPY_THREADS = min(8, max(2, os.cpu_count() or 2))
"""Threads for put_files/get_files: copies release the GIL, but small files cost mostly CPU
(file creation, hashing), so more threads than cores only add contention."""


class LocalStorage(SidecarFolder):
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
        super().__init__(root)
        self.access = access or Access()
        self._create = create
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r}, prefix={self.access.prefix!r})"

    def __enter__(self) -> LocalStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, key: str, *, write: bool, delete: bool = False) -> str:
        check_key(key)
        self.access.check(key, write=write, url=self.url, delete=delete)
        return key

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
