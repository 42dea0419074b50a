"""The storage seam: ObjectInfo, Grant, Access, the Storage Protocol, URLs and open_storage."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from azmanagers.errors import ConfigError, StorageAccessError
from azmanagers.storage.keys import MAX_KEY_CHARS as MAX_KEY_CHARS
from azmanagers.storage.keys import check_key as check_key
from azmanagers.storage.keys import check_prefix as check_prefix
from azmanagers.storage.keys import check_unique as check_unique
from azmanagers.storage.keys import dir_prefix as dir_prefix
from azmanagers.storage.keys import is_key as is_key

SCHEMES = ("file://", "az://")
"""The storage URL schemes open_storage understands."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object.

    Attributes
    ----------
    key : str
        Relative to the storage root, "/"-separated, no leading "/".
    size : int
        Bytes.
    sha256 : str or None
        Lower-case hex from our metadata; None when the object was written by someone else.
    modified : float
        Last modification, epoch seconds.
    """

    key: str
    size: int
    sha256: str | None
    modified: float


@dataclass(frozen=True)
class Grant:
    """A scoped, expiring credential a worker uses to open the job's storage.

    Picklable; the secret (``token``) is never in ``repr``/``str``. On ``file://`` the token is
    empty: the grant is only good on the same machine (or a shared file system), and its prefix,
    write flag and expiry are enforced by the client. On ``az://`` the token is a container SAS:
    Blob's flat namespace has no scope smaller than a container, so the service enforces the
    container, permissions and expiry, and the client also refuses keys outside ``prefix``.
    """

    url: str
    prefix: str
    expires_at: float
    write: bool
    endpoint: str = ""
    token: str = field(default="", repr=False)

    def open(self) -> Storage:
        """Return a Storage limited to ``prefix`` (and read-only unless ``write``).

        Returns
        -------
        Storage
            Every call outside ``prefix`` raises StorageAccessError, as does every write when
            ``write`` is false, every ``delete`` (a grant never deletes), and every call after
            ``expires_at``.
        """
        access = Access(
            prefix=self.prefix, write=self.write, delete=False, expires_at=self.expires_at
        )
        if self.url.startswith("file://"):
            from azmanagers.storage.local import LocalStorage

            return LocalStorage(local_root(self.url), access=access, create=False)
        if self.url.startswith("az://"):
            from azmanagers.storage.blob import open_granted

            return open_granted(self.url, self.endpoint, self.token, access)
        raise ConfigError(f"grant URL {self.url!r}: expected one of {', '.join(SCHEMES)}")


@dataclass(frozen=True)
class Access:
    """What a Storage may touch: keys under ``prefix``; writes when ``write``; deletes."""

    prefix: str = ""
    write: bool = True
    delete: bool = True
    expires_at: float | None = None

    def check(self, key: str, *, write: bool, url: str, delete: bool = False) -> None:
        """Raise StorageAccessError when ``key`` (or a write) is outside this access.

        Parameters
        ----------
        key : str
            A checked key, or a listing prefix.
        write : bool
            Whether the call changes storage.
        url : str
            The storage root, for the message.
        delete : bool
            Whether the call deletes.
        """
        if self.expires_at is not None and time.time() >= self.expires_at:
            raise StorageAccessError(
                f"the storage grant for {url} expired; ask the job's owner for a new one"
            )
        if not key.startswith(self.prefix):
            raise StorageAccessError(
                f"{url}/{key} is outside this credential's prefix {self.prefix!r}"
            )
        if write and not self.write:
            raise StorageAccessError(f"{url}/{key}: this credential is read-only")
        if delete and not self.delete:
            raise StorageAccessError(f"{url}/{key}: this credential may not delete")

    def inside(self, name: str, url: str) -> Access:
        """What this access allows inside the folder (or a job's space) ``name`` of ``url``."""
        inner = f"{name}/"
        if self.prefix and not (inner.startswith(self.prefix) or self.prefix.startswith(inner)):
            raise StorageAccessError(
                f"{url}: this credential is limited to {self.prefix!r}, not {name!r}"
            )
        prefix = self.prefix[len(inner) :] if self.prefix.startswith(inner) else ""
        return Access(prefix, self.write, self.delete, self.expires_at)


class Storage(Protocol):
    """A storage root (a folder, or a Blob container and prefix) holding objects by key.

    Every call checks its key before any I/O (ConfigError for a bad key). Objects carry a
    SHA-256 kept by us; readers never see a partial object.
    """

    url: str
    access: Access

    def url_for(self, key: str) -> str:
        """Return ``url + "/" + key``."""
        ...

    def check(self) -> None:
        """Check in one call that the root is reachable and exists (creating it if allowed)."""
        ...

    def put_file(self, local: Path, key: str, *, sha256: str | None = None) -> ObjectInfo:
        """Store a file; no upload when the object at ``key`` already has its SHA-256."""
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` at ``key`` (overwrite, atomic, SHA-256 kept)."""
        ...

    def get_file(self, key: str, local: Path, *, verify: bool = True) -> ObjectInfo:
        """Fetch ``key`` into ``local`` via a temp file and rename; verify the SHA-256."""
        ...

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Return the bytes at ``key``, verified against the recorded SHA-256."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or None when there is none."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (recursive, keys sorted)."""
        ...

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Return the sorted names of the immediate child "folders" of ``prefix``."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object at ``key``; a missing object is fine."""
        ...

    def put_files(self, pairs: Sequence[tuple[Path, str]]) -> builtins.list[ObjectInfo]:
        """Store many ``(local, key)`` pairs in parallel; infos in the order given."""
        ...

    def get_files(
        self, pairs: Sequence[tuple[str, Path]], *, verify: bool = True
    ) -> builtins.list[ObjectInfo]:
        """Fetch many ``(key, local)`` pairs in parallel; infos in the order given."""
        ...

    def grant(self, prefix: str, *, ttl_s: float, write: bool) -> Grant:
        """Return a credential for keys under ``prefix`` that expires after ``ttl_s``."""
        ...

    def close(self) -> None:
        """Release connections and threads; the Storage is not used afterwards."""
        ...


def check_ttl(ttl_s: float) -> float:
    """Return a positive finite ``ttl_s`` or raise ConfigError."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)):
        raise ConfigError(f"grant ttl_s {ttl_s!r}: expected seconds, more than 0 and under a year")
    if not 0 < ttl_s < 366 * 86400:
        raise ConfigError(f"grant ttl_s {ttl_s!r}: expected seconds, more than 0 and under a year")
    return float(ttl_s)


def shown_url(url: object) -> str:
    """Return ``url`` for a message: its query and fragment (a SAS) cut off."""
    text = str(url)
    cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=len(text))
    return text[:cut] + ("?..." if cut < len(text) else "")


def _scheme(text: str) -> str:
    """Return the URL's scheme lower-cased with its "://" ("" when there is none)."""
    head, sep, _ = text.partition("://")
    return head.lower() + sep if sep and "/" not in head else ""


def is_storage_url(text: str) -> bool:
    """Tell a storage URL (``file://...``, ``az://...``, any case) from a local path."""
    return isinstance(text, str) and _scheme(text) in SCHEMES


def local_root(url: str) -> Path:
    """Return the normalised absolute folder of a ``file://`` URL or an absolute path.

    ConfigError for anything else, and for the root of the file system (``file:///``), which
    would make every file on the machine a key.
    """
    from urllib.parse import unquote, urlsplit

    shown = shown_url(url)
    if _scheme(url) == "file://":
        parts = urlsplit("file://" + url[len("file://") :])
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigError(
                f"storage URL {shown!r}: expected file:///absolute/path (a folder on this machine)"
            )
        text = unquote(parts.path)
    else:
        text = url
    path = Path(text)
    if not path.is_absolute() or "\x00" in text:
        raise ConfigError(
            f"storage URL {shown!r}: expected file:///absolute/path or an absolute folder path"
        )
    path = Path(os.path.normpath(text))
    if path == Path(path.anchor):
        raise ConfigError(
            f"storage URL {shown!r}: the root of the file system cannot be a storage folder; "
            "name a folder such as file:///data/azm"
        )
    return path


def parallel_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Return ``[fn(i) for i in items]`` computed on ``pool``; the first error is raised.

    When one call fails, the calls not yet started are cancelled and the running ones are
    waited for before the error is raised: nothing is transferred after this returns.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    futures: list[Future[R]] = [pool.submit(fn, item) for item in items]
    try:
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()
        wait(futures)


def open_storage(url: str, *, connection_string: str | None = None) -> Storage:
    """Open the storage root at ``url``.

    Parameters
    ----------
    url : str
        ``file:///abs/path`` (or an absolute path), or ``az://container[/prefix]``; the
        scheme may be in any case.
    connection_string : str, optional
        For ``az://``: the account's connection string (else the environment; see
        ``azmanagers.storage.blob``).

    Returns
    -------
    Storage
        Nothing is contacted yet; call ``check()`` for one clear error up front.
    """
    if not isinstance(url, str) or not url:
        raise ConfigError(f"storage URL {url!r}: expected file:///path or az://container/prefix")
    scheme = _scheme(url)
    shown = shown_url(url)
    if scheme == "az://":
        from azmanagers.storage.blob import open_blob

        return open_blob("az://" + url[len(scheme) :], connection_string=connection_string)
    if scheme == "file://" or (not scheme and url.startswith("/")):
        from azmanagers.storage.local import LocalStorage

        return LocalStorage(local_root(url))
    if scheme in ("https://", "http://") and ".blob." in url.split("/")[2].lower():
        raise ConfigError(
            f"storage URL {shown!r}: a Blob endpoint URL; use az://container/prefix (the account "
            "comes from connection_string= or AZMANAGERS_STORAGE_CONNECTION_STRING / "
            "AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_ACCOUNT), never a SAS URL"
        )
    if not scheme:
        raise ConfigError(
            f"storage URL {shown!r}: a relative path; use an absolute path or "
            "file:///absolute/path (a folder; '~' is not expanded), or az://container/prefix"
        )
    raise ConfigError(
        f"storage URL {shown!r}: unknown scheme {scheme!r}; use file:///absolute/path (a folder) "
        "or az://container/prefix (Azure Blob)"
    )
