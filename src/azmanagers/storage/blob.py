"""The az:// back-end on azure-storage-blob: SHA-256 in metadata, parallel blocks and files."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

from azure.core.credentials import TokenCredential
from azure.storage.blob import BlobServiceClient, ContainerClient

from azmanagers.errors import ConfigError, StorageError
from azmanagers.storage.base import (
    MAX_KEY_CHARS,
    Access,
    Grant,
    ObjectInfo,
    check_key,
    check_prefix,
    check_ttl,
    check_unique,
    dir_prefix,
    parallel_map,
)
from azmanagers.storage.blob_account import (
    BLOCK_BYTES,
    BLOCK_THREADS,
    CHECK_READ_TIMEOUT_S,
    FILE_THREADS,
    Account,
    BlobLocation,
    make_session,
    parse_az_url,
    resolve_account,
    sas_container_client,
    service_client,
)
from azmanagers.storage.blob_errors import mapped_errors
from azmanagers.storage.blob_listing import folder_names, head, list_common_folder, list_infos
from azmanagers.storage.blob_sas import container_sas
from azmanagers.storage.blob_transfer import (
    SHA_KEY,
    CommitLost,
    Where,
    download,
    put_blocks,
    stamp,
)
from azmanagers.storage.files import download_to
from azmanagers.storage.hashing import is_sha256, sha256_file

CHECK_RETRIES = 1
"""check() answers fast: one retry with CHECK_READ_TIMEOUT_S (an unreachable or silent
endpoint is reported in about 12 seconds)."""

COMMIT_ATTEMPTS = 2
"""Block uploads whose commit another writer's commit discarded: one more try (see _blocks)."""

LIST_FIRST_AT = 8
"""put_files lists the keys' common folder once (instead of a HEAD per file) from this many."""


class BlobStorage:
    """Objects as block blobs named ``<prefix>/<key>`` in one container (``az://c/prefix``).

    Big files go up as 8 MiB blocks staged in parallel and committed with the SHA-256 in the
    metadata (readers never see a partial blob) and come down as parallel ranged reads pinned
    to the first read's ETag; many files move on a shared pool of FILE_THREADS threads.
    """

    def __init__(
        self,
        location: BlobLocation,
        container: ContainerClient,
        *,
        endpoint: str,
        access: Access | None = None,
        account: Account | None = None,
        service: BlobServiceClient | None = None,
        closers: Sequence[object] = (),
    ) -> None:
        self.url = location.url
        self._location = location
        self._base = location.prefix
        self._container = container
        self.endpoint = endpoint
        self.access = access or Access()
        self.account = account
        self.service = service
        self._closers = list(closers)
        self._files: ThreadPoolExecutor | None = None
        self._blocks: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BlobStorage({self.url!r}, endpoint={self.endpoint!r})"

    def __enter__(self) -> BlobStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url_for(self, key: str) -> str:
        """Return ``url + "/" + key``."""
        return f"{self.url}/{check_key(key)}"

    def _name(self, key: str, *, write: bool, delete: bool = False) -> str:
        check_key(key)
        if len(self._base) + len(key) > MAX_KEY_CHARS:
            raise ConfigError(
                f"storage key {key[:40]!r}...: with the prefix {self._base!r} the blob name is "
                f"longer than {MAX_KEY_CHARS} characters (Blob's limit); shorten it"
            )
        self.access.check(key, write=write, url=self.url, delete=delete)
        return self._base + key

    def _where(self, key: str) -> Where:
        return Where(key=key, url=self.url_for(key), endpoint=self.endpoint, account=self.account)

    def _blocks_up(
        self, name: str, key: str, source: memoryview | int, size: int, digest: str | None
    ) -> ObjectInfo:
        """Upload in blocks; when another writer's commit discarded ours, look before retrying.

        Two writers of one key (e.g. two submissions staging the same input) race: the first
        commit discards the other's staged blocks. The loser HEADs the blob: the same size and
        SHA-256 means the content is there (success); otherwise it uploads once more.
        """
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                return put_blocks(
                    self._container, self._pools()[1], name, self._where(key), source, size, digest
                )
            except CommitLost as lost:
                there = self._head(name, key)
                if there is not None and (there.size, there.sha256) == (size, lost.digest):
                    return there
                if attempt + 1 == COMMIT_ATTEMPTS:
                    raise StorageError(
                        f"{self.url_for(key)}: other writers kept replacing this blob while it "
                        "was uploaded; try again"
                    ) from lost
                digest = lost.digest
        raise StorageError(f"{self.url_for(key)}: not uploaded")  # pragma: no cover

    def _down(
        self, name: str, key: str, temp: str | None, verify: bool
    ) -> tuple[bytes, ObjectInfo]:
        """Download (restarted once when the blob was replaced during the read)."""
        return download(self._container, self._pools()[1], name, self._where(key), temp, verify)

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._lock:
            if self._files is None or self._blocks is None:
                self._files = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="azm-blob-file")
                self._blocks = ThreadPoolExecutor(
                    BLOCK_THREADS, thread_name_prefix="azm-blob-block"
                )
            return self._files, self._blocks

    # -- the Storage calls -----------------------------------------------------------------
    def check(self) -> None:
        """Reach the account in one call; create the container when we hold the account."""
        with mapped_errors(f"storage {self.url}", self.endpoint, account=self.account):
            if self.account is not None:
                from azure.core.exceptions import ResourceExistsError

                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container(
                        retry_total=CHECK_RETRIES, read_timeout=CHECK_READ_TIMEOUT_S
                    )
                return
            pages = self._container.list_blobs(
                name_starts_with=self._base + self.access.prefix,
                results_per_page=1,
                retry_total=CHECK_RETRIES,
                read_timeout=CHECK_READ_TIMEOUT_S,
            ).by_page()
            next(iter(pages), None)

    def _head(self, name: str, key: str) -> ObjectInfo | None:
        return head(self._container, name, self._where(key))

    def stat(self, key: str) -> ObjectInfo | None:
        """Return the info of ``key`` (one HEAD), or None when there is no object."""
        return self._head(self._name(key, write=False), key)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Write ``data`` at ``key`` in one request (overwrite, atomic)."""
        name = self._name(key, write=True)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > BLOCK_BYTES:
            return self._blocks_up(name, key, memoryview(data), len(data), digest)
        with mapped_errors(self.url_for(key), self.endpoint, account=self.account):
            done = self._container.get_blob_client(name).upload_blob(
                data, length=len(data), overwrite=True, metadata={SHA_KEY: digest}
            )
        return ObjectInfo(key, len(data), digest, stamp(done["last_modified"]))

    def _put(
        self, local: Path, key: str, sha256: str | None, known: ObjectInfo | bool | None
    ) -> ObjectInfo:
        """Upload ``local`` unless the blob has its hash; ``known`` True means "HEAD first"."""
        name = self._name(key, write=True)
        try:
            size = os.stat(local).st_size
        except OSError as exc:
            raise ConfigError(f"local file {local}: {exc.strerror}") from exc
        existing = self._head(name, key) if known is True else known or None
        if existing and existing.size == size and existing.sha256:
            sha256 = sha256 or sha256_file(local)
            if sha256 == existing.sha256:
                return existing
        if size <= BLOCK_BYTES:
            data = Path(local).read_bytes()
            digest = sha256 or hashlib.sha256(data).hexdigest()
            with mapped_errors(self.url_for(key), self.endpoint, account=self.account):
                done = self._container.get_blob_client(name).upload_blob(
                    data, length=len(data), overwrite=True, metadata={SHA_KEY: digest}
                )
            return ObjectInfo(key, len(data), digest, stamp(done["last_modified"]))
        fd = os.open(local, os.O_RDONLY)
        try:
            return self._blocks_up(name, key, fd, size, sha256)
        finally:
            os.close(fd)

    def put_file(self, local: Path, key: str, *, sha256: str | None = None) -> ObjectInfo:
        """Upload ``local`` to ``key`` unless the blob there has its SHA-256 (one HEAD)."""
        self._name(key, write=True)
        if sha256 is not None and not is_sha256(sha256):
            raise ConfigError(f"sha256 {sha256!r}: expected 64 lower-case hex characters")
        if not Path(local).is_file():
            raise ConfigError(f"local file {local} does not exist (or is not a file)")
        return self._put(Path(local), key, sha256, True)

    def put_files(self, pairs: Sequence[tuple[Path, str]]) -> builtins.list[ObjectInfo]:
        """Upload many ``(local, key)`` pairs on FILE_THREADS threads; skip same-hash blobs.

        From LIST_FIRST_AT files on, one listing of the keys' common folder replaces a HEAD
        per file (a listing cut short falls back to HEADs for the keys past its end).
        """
        for local, key in pairs:
            self._name(key, write=True)
            if not Path(local).is_file():
                raise ConfigError(f"local file {local} does not exist (or is not a file)")
        check_unique([key for _local, key in pairs])
        files, _ = self._pools()
        if len(pairs) < LIST_FIRST_AT:
            return parallel_map(files, lambda p: self._put(p[0], p[1], None, True), pairs)
        found, last = list_common_folder(self.list, [key for _, key in pairs])

        def one(pair: tuple[Path, str]) -> ObjectInfo:
            local, key = pair
            unknown = last is not None and key > last
            return self._put(local, key, None, True if unknown else found.get(key))

        return parallel_map(files, one, pairs)

    def get_file(self, key: str, local: Path, *, verify: bool = True) -> ObjectInfo:
        """Download ``key`` to ``local`` (temp file + rename), verifying its SHA-256."""
        name = self._name(key, write=False)
        infos: builtins.list[ObjectInfo] = []

        def fill(temp: str) -> None:
            infos.append(self._down(name, key, temp, verify)[1])

        download_to(Path(local), fill)
        return infos[0]

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Return the bytes at ``key``, verified against the recorded SHA-256."""
        return self._down(self._name(key, write=False), key, None, verify)[0]

    def get_files(
        self, pairs: Sequence[tuple[str, Path]], *, verify: bool = True
    ) -> builtins.list[ObjectInfo]:
        """Download many ``(key, local)`` pairs on FILE_THREADS threads; one GET per small file."""
        for key, _local in pairs:
            self._name(key, write=False)
        files, _ = self._pools()
        return parallel_map(files, lambda p: self.get_file(p[0], p[1], verify=verify), pairs)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose keys start with ``prefix``, in the service's (sorted) order."""
        check_prefix(prefix)
        self.access.check(prefix, write=False, url=self.url)
        where = Where(prefix, f"{self.url}/{prefix}", self.endpoint, self.account)
        yield from list_infos(self._container, self._base, prefix, where)

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Return the sorted names of the "folders" directly under ``prefix``."""
        folder = dir_prefix(prefix)
        self.access.check(folder, write=False, url=self.url)
        where = Where(folder, f"{self.url}/{folder}", self.endpoint, self.account)
        return folder_names(self._container, self._base, folder, where)

    def delete(self, key: str) -> None:
        """Delete the blob at ``key``; a missing blob is fine."""
        from azure.core.exceptions import ResourceNotFoundError

        name = self._name(key, write=True, delete=True)
        with (
            mapped_errors(self.url_for(key), self.endpoint, account=self.account),
            contextlib.suppress(ResourceNotFoundError),
        ):
            self._container.delete_blob(name)

    def grant(self, prefix: str, *, ttl_s: float, write: bool) -> Grant:
        """Return a container SAS (read+list, plus create+write+add when ``write``; no delete).

        Blob's flat namespace has no scope smaller than a container, so the SAS covers the
        container; the prefix is enforced by the client that opens the Grant. With an account
        key this is an account-key SAS; with a signed-in identity a user-delegation SAS.
        """
        scope = dir_prefix(prefix)
        self.access.check(scope, write=write, url=self.url)
        expiry = datetime.now(timezone.utc) + timedelta(seconds=check_ttl(ttl_s))
        with mapped_errors(f"a grant for {self.url}/{scope}", self.endpoint, account=self.account):
            token = container_sas(
                self.account, self.service, self._location.container, expiry, write=write
            )
        return Grant(
            url=self.url,
            prefix=scope,
            expires_at=expiry.timestamp(),
            write=write,
            endpoint=self.endpoint,
            token=token,
        )

    def close(self) -> None:
        """Stop the transfer threads and close the HTTP connections."""
        with self._lock:
            pools = (self._files, self._blocks)
            self._files = self._blocks = None
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=True)
        self._container.close()
        for thing in self._closers:
            close = getattr(thing, "close", None)
            if callable(close):
                close()
        self._closers = []


def open_blob(url: str, *, connection_string: str | None = None) -> BlobStorage:
    """Open ``az://container[/prefix]`` on the account resolve_account finds."""
    location = parse_az_url(url)
    account = resolve_account(connection_string)
    session = make_session()
    closers: builtins.list[object] = [session]
    credential: TokenCredential | None = None
    try:
        if not account.connection_string:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
            closers.insert(0, credential)
        service = service_client(account, session, credential)
    except ValueError:
        session.close()
        # The SDK's message may quote the connection string (and its key): say less.
        raise ConfigError(
            "the storage connection string is malformed; copy it again from the account's "
            "Access keys (or `az storage account show-connection-string`)"
        ) from None
    endpoint = service.url.split("?", 1)[0].rstrip("/")
    return BlobStorage(
        location,
        service.get_container_client(location.container),
        endpoint=endpoint,
        account=account,
        service=service,
        closers=[service, *closers],
    )


def open_granted(url: str, endpoint: str, token: str, access: Access) -> BlobStorage:
    """Open ``url`` with a Grant's container SAS: the ``Storage`` behind ``Grant.open()``."""
    location = parse_az_url(url)
    if not endpoint or not token:
        raise ConfigError(f"grant for {url}: it has no endpoint or token; make it with grant()")
    session = make_session()
    container = sas_container_client(endpoint, location.container, token, session)
    return BlobStorage(location, container, endpoint=endpoint, access=access, closers=[session])
