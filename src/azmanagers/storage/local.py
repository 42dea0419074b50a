"""The file:// back-end: a folder, with SHA-256 sidecars under <root>/.azm-meta/."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    dir_prefix,
    parallel_map,
)
from azmanagers.storage.hashing import CHUNK_BYTES, is_sha256, sha256_file

META_DIR = ".azm-meta"
"""Folder under the root holding one sidecar per object: "<sha256 hex> <size>"."""

TEMP_PREFIX = ".azm-tmp-"
"""Temp files (renamed into place when complete) start with this; never listed."""

COPY_THREADS = 8
"""Threads for put_files/get_files (copies release the GIL)."""

DIR_MODE = 0o700
"""Folders we create in the root."""


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """Map OSError to the storage errors, naming ``what``."""
    try:
        yield
    except (ConfigError, StorageError):
        raise
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"{what}: not found ({exc.strerror})") from exc
    except PermissionError as exc:
        raise StorageAccessError(f"{what}: permission denied; check the folder's owner") from exc
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror or exc}") from exc


def _makedirs(path: Path, stop: Path) -> None:
    """Create ``path`` and its missing parents up to ``stop``, each with mode 0700."""
    if path.is_dir():
        return
    if path != stop and path.parent != path:
        _makedirs(path.parent, stop)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)


def atomic_write(target: Path, fill: Callable[[str], object], stop: Path) -> None:
    """Write ``target`` through a temp file in its folder (``fill(temp)``) and a rename."""
    _makedirs(target.parent, stop)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
    os.close(fd)
    try:
        fill(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _copy_hashing(source: Path, temp: str) -> str:
    """Copy ``source`` to ``temp`` in one pass and return the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(temp, "wb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


class LocalStorage:
    """Objects as files under a folder (``file:///abs/path``).

    Writes go to a temp file in the same folder, then ``os.replace``; files are 0600 and
    folders 0700. Each object's SHA-256 and size sit in ``<root>/.azm-meta/<key>``, removed
    before and written after the data, so a reader sees no hash or a matching one.
    """

    def __init__(self, root: Path, *, access: Access | None = None, create: bool = True) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri()
        self.access = access or Access()
        self._create = create
        self._pool: ThreadPoolExecutor | None = None

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

    def _meta(self, key: str) -> Path:
        return self.root / META_DIR / key

    def _read_meta(self, key: str, size: int) -> str | None:
        """Return the recorded SHA-256 of ``key`` when its sidecar matches ``size``."""
        try:
            text = self._meta(key).read_text()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        parts = text.split()
        if len(parts) == 2 and is_sha256(parts[0]) and parts[1] == str(size):
            return parts[0]
        return None

    def _write_meta(self, key: str, sha256: str, size: int) -> None:
        def fill(temp: str) -> None:
            Path(temp).write_text(f"{sha256} {size}\n")

        atomic_write(self._meta(key), fill, self.root)

    def _drop_meta(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._meta(key))

    def _info(self, key: str, st: os.stat_result, sha256: str | None) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, sha256=sha256, modified=st.st_mtime)

    # -- the Storage calls -----------------------------------------------------------------
    def check(self) -> None:
        """Check the root folder exists and is usable (create it 0700 when allowed)."""
        with _os_errors(f"storage folder {self.root}"):
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
        """Copy ``local`` to ``key``, unless the object there already has its SHA-256."""
        self._key(key, write=True)
        local = Path(local)
        if not local.is_file():
            raise ConfigError(f"local file {local} does not exist (or is not a file)")
        if sha256 is not None and not is_sha256(sha256):
            raise ConfigError(f"sha256 {sha256!r}: expected 64 lower-case hex characters")
        target = self.root / key
        with _os_errors(f"{self.url_for(key)} from {local}"):
            digest = sha256 or sha256_file(local)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                st = os.stat(target)
                if self._read_meta(key, st.st_size) == digest:
                    return self._info(key, st, digest)
            self._drop_meta(key)
            atomic_write(target, lambda temp: shutil.copyfile(local, temp), self.root)
            st = os.stat(target)
            self._write_meta(key, digest, st.st_size)
        return self._info(key, st, digest)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write ``data`` at ``key`` (overwrite, atomic)."""
        self._key(key, write=True)
        target = self.root / key
        with _os_errors(self.url_for(key)):
            digest = hashlib.sha256(data).hexdigest()
            self._drop_meta(key)
            atomic_write(target, lambda temp: Path(temp).write_bytes(data), self.root)
            st = os.stat(target)
            self._write_meta(key, digest, st.st_size)
        return self._info(key, st, digest)

    def _fetch(self, key: str, temp: str, verify: bool) -> ObjectInfo:
        """Copy ``key`` into ``temp``; verify against the sidecar (re-read once if it moved)."""
        source = self.root / key
        for attempt in range(2):
            st = os.stat(source)
            if not os.path.isfile(source):
                raise StorageNotFoundError(f"{self.url_for(key)} is a folder, not an object")
            recorded = self._read_meta(key, st.st_size)
            if not (verify and recorded):
                shutil.copyfile(source, temp)
                return self._info(key, st, recorded)
            got = _copy_hashing(source, temp)
            if got == recorded:
                return self._info(key, st, recorded)
            if attempt == 0 and self._read_meta(key, os.stat(source).st_size) != recorded:
                continue  # a writer replaced the object meanwhile: read the new one
            raise IntegrityError(
                f"{self.url_for(key)}: SHA-256 {got} does not match the recorded {recorded}"
            )
        raise StorageError(f"{self.url_for(key)} kept changing while being read; try again")

    def get_file(self, key: str, local: Path, *, verify: bool = True) -> ObjectInfo:
        """Copy ``key`` to ``local`` (temp file + rename), verifying its SHA-256."""
        self._key(key, write=False)
        local = Path(local)
        info: list[ObjectInfo] = []
        with _os_errors(f"{self.url_for(key)} to {local}"):
            local.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(
                local, lambda temp: info.append(self._fetch(key, temp, verify)), local.parent
            )
        return info[0]

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Return the bytes at ``key``, verified against the recorded SHA-256."""
        self._key(key, write=False)
        source = self.root / key
        with _os_errors(self.url_for(key)):
            for _attempt in range(2):
                if not source.is_file() and source.exists():
                    raise StorageNotFoundError(f"{self.url_for(key)} is a folder, not an object")
                data = source.read_bytes()
                recorded = self._read_meta(key, len(data))
                if not (verify and recorded) or hashlib.sha256(data).hexdigest() == recorded:
                    return data
            raise IntegrityError(
                f"{self.url_for(key)}: its bytes do not match the recorded SHA-256 {recorded}"
            )
        raise StorageError(f"{self.url_for(key)}: could not be read")  # pragma: no cover

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the info of ``key``, or None when there is no object."""
        self._key(key, write=False)
        with _os_errors(self.url_for(key)):
            try:
                st = os.stat(self.root / key)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not os.path.isfile(self.root / key):
                return None
            return self._info(key, st, self._read_meta(key, st.st_size))

    def _walk(self, folder: Path, rel: str, out: builtins.list[tuple[str, os.stat_result]]) -> None:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(".azm-"):
                continue
            if entry.is_dir(follow_symlinks=False):
                self._walk(Path(entry.path), f"{rel}{entry.name}/", out)
            elif entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    out.append((f"{rel}{entry.name}", entry.stat()))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose keys start with ``prefix``, sorted by key."""
        check_prefix(prefix)
        self.access.check(prefix, write=False, url=self.url)
        folder = prefix[: prefix.rfind("/") + 1]
        found: builtins.list[tuple[str, os.stat_result]] = []
        with _os_errors(f"{self.url}/{prefix}"):
            self._walk(self.root / folder, folder, found)
        found.sort(key=lambda item: item[0])
        for key, st in found:
            if key.startswith(prefix):
                yield self._info(key, st, self._read_meta(key, st.st_size))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Return the sorted names of the folders directly under ``prefix``."""
        folder = dir_prefix(prefix)
        self.access.check(folder, write=False, url=self.url)
        with _os_errors(f"{self.url}/{folder}"):
            try:
                entries = list(os.scandir(self.root / folder))
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(
                e.name
                for e in entries
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".azm-")
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
        """Delete the object at ``key`` and its sidecar; a missing object is fine."""
        self._key(key, write=True, delete=True)
        with _os_errors(self.url_for(key)):
            self._drop_meta(key)
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                os.unlink(self.root / key)
            self._prune((self.root / key).parent, self.root)
            self._prune(self._meta(key).parent, self.root / META_DIR)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="azm-file")
        return self._pool

    def put_files(self, pairs: Sequence[tuple[Path, str]]) -> builtins.list[ObjectInfo]:
        """Copy many ``(local, key)`` pairs in parallel; infos in the order given."""
        for _local, key in pairs:
            self._key(key, write=True)
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
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
