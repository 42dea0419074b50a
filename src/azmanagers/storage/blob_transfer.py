"""Moving one blob: parallel staged blocks up, parallel ranged reads down, SHA-256 checked."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobBlock, BlobProperties, ContainerClient

from azmanagers.errors import IntegrityError, StorageError
from azmanagers.storage.base import ObjectInfo
from azmanagers.storage.blob_account import BLOCK_BYTES, BLOCK_THREADS, Account
from azmanagers.storage.blob_errors import error_code, mapped_errors
from azmanagers.storage.hashing import MALFORMED, read_recorded

SHA_KEY = "azm_sha256"
"""Blob metadata name holding the object's SHA-256 (lower-case hex)."""


class BlobChanged(StorageError):
    """The blob was replaced while it was being read (412 on a read pinned to its ETag)."""


class CommitLost(StorageError):
    """Our block list could not be committed: another writer committed the blob meanwhile."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


READ_ATTEMPTS = 2
"""Reads of a blob that was replaced meanwhile (412): one restart, then a StorageError."""

LOST_CODES = frozenset({"InvalidBlockList", "BlockListTooLong", "BlobNotFound", "ConditionNotMet"})
"""Commit errors that mean another writer's commit discarded our staged blocks."""


@dataclass(frozen=True)
class Where:
    """The object being moved, for messages: its key, its URL and the account endpoint."""

    key: str
    url: str
    endpoint: str
    account: Account | None = None
    """The credential in use (what a refusal's message tells to do); None: a job's SAS."""


def blob_info(
    key: str, size: int, metadata: dict[str, str] | None, modified: datetime
) -> ObjectInfo:
    sha = read_recorded((metadata or {}).get(SHA_KEY))
    return ObjectInfo(
        key=key,
        size=size,
        sha256=None if sha == MALFORMED else sha,
        modified=modified.timestamp(),
    )


def stamp(value: object) -> float:
    """Epoch seconds of a service timestamp (now, when the service sent none)."""
    return value.timestamp() if isinstance(value, datetime) else time.time()


def put_blocks(
    container: ContainerClient,
    blocks: ThreadPoolExecutor,
    name: str,
    where: Where,
    source: memoryview | int,
    size: int,
    digest: str | None,
) -> ObjectInfo:
    """Stage ``size`` bytes (a buffer, or a file descriptor read with pread) in blocks.

    The caller's thread reads (and hashes, when ``digest`` is None) block after block while
    BLOCK_THREADS upload them; the block list and the SHA-256 are committed at the end.
    """
    blob = container.get_blob_client(name)
    tag = uuid.uuid4().hex
    hasher = hashlib.sha256() if digest is None else None
    ids: list[str] = []

    def stage(block_id: str, data: bytes) -> None:
        blob.stage_block(block_id, data, length=len(data))

    pending: deque[Future[None]] = deque()
    with mapped_errors(where.url, where.endpoint, account=where.account):
        try:
            for offset in range(0, size, BLOCK_BYTES):
                length = min(BLOCK_BYTES, size - offset)
                if isinstance(source, int):
                    chunk: bytes | memoryview = os.pread(source, length, offset)
                else:
                    chunk = source[offset : offset + length]
                if len(chunk) != length:
                    raise StorageError(f"{where.url}: the local file changed size while uploading")
                if hasher is not None:
                    hasher.update(chunk)
                block_id = base64.b64encode(f"{tag}-{len(ids):08d}".encode()).decode()
                ids.append(block_id)
                pending.append(blocks.submit(stage, block_id, bytes(chunk)))
                while len(pending) > BLOCK_THREADS + 1:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
        digest = digest or (hasher.hexdigest() if hasher else "")
        try:
            done = blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], metadata={SHA_KEY: digest}
            )
        except HttpResponseError as exc:
            if exc.status_code in (409, 412) or error_code(exc) in LOST_CODES:
                raise CommitLost(
                    f"{where.url}: another writer committed this blob during the upload", digest
                ) from exc
            raise
    return ObjectInfo(where.key, size, digest, stamp(done["last_modified"]))


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def download(
    container: ContainerClient,
    blocks: ThreadPoolExecutor,
    name: str,
    where: Where,
    temp: str | None,
    verify: bool,
) -> tuple[bytes, ObjectInfo]:
    """Read blob ``name`` into file ``temp`` (or return its bytes when ``temp`` is None).

    The first read gives the size, metadata and ETag; the other BLOCK_BYTES ranges are read on
    ``blocks``, pinned to that ETag, each written in place by the thread that read it, while
    the caller's thread hashes the finished ranges in order. A blob replaced during the read
    (412) is read again from the start, READ_ATTEMPTS in all; then BlobChanged.
    """
    for attempt in range(READ_ATTEMPTS):
        try:
            return _download(container, blocks, name, where, temp, verify)
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise
            if attempt + 1 == READ_ATTEMPTS:
                raise BlobChanged(f"{where.url} kept changing while being read; try again") from exc
    raise StorageError(f"{where.url}: not read")  # pragma: no cover


def _download(
    container: ContainerClient,
    blocks: ThreadPoolExecutor,
    name: str,
    where: Where,
    temp: str | None,
    verify: bool,
) -> tuple[bytes, ObjectInfo]:
    with mapped_errors(where.url, where.endpoint, passing=(412,), account=where.account):
        first = container.download_blob(name)
        props: BlobProperties = first.properties
        size = first.size
        recorded = read_recorded((props.metadata or {}).get(SHA_KEY)) if verify else None
        if recorded == MALFORMED:
            raise IntegrityError(
                f"{where.url}: its recorded SHA-256 ({SHA_KEY} metadata) is not a hash; the blob "
                "was changed outside azmanagers: store it again"
            )
        hasher = hashlib.sha256() if recorded else None
        head = next(iter(first.chunks()), b"") if size > BLOCK_BYTES else first.readall()
        buffer = bytearray(size) if temp is None else None
        fd = os.open(temp, os.O_RDWR | os.O_TRUNC) if temp is not None else -1
        pending: list[tuple[int, int, Future[None]]] = []

        def put(offset: int, data: bytes) -> None:
            if buffer is not None:
                buffer[offset : offset + len(data)] = data
            else:
                _pwrite_all(fd, data, offset)

        def fetch(offset: int, length: int) -> None:
            part = container.download_blob(
                name,
                offset=offset,
                length=length,
                etag=props.etag,
                match_condition=MatchConditions.IfNotModified,
            )
            data = part.readall()
            if len(data) != length:
                raise StorageError(f"{where.url}: a ranged read came back short; try again")
            put(offset, data)

        try:
            put(0, head)
            for offset in range(len(head), size, BLOCK_BYTES):
                length = min(BLOCK_BYTES, size - offset)
                pending.append((offset, length, blocks.submit(fetch, offset, length)))
            if hasher is not None:
                hasher.update(head)
            for offset, length, future in pending:
                future.result()
                if hasher is not None:
                    hasher.update(
                        memoryview(buffer)[offset : offset + length]
                        if buffer is not None
                        else os.pread(fd, length, offset)
                    )
        finally:
            for _offset, _length, future in pending:
                future.cancel()
            wait([future for _offset, _length, future in pending])  # none writes after close
            if fd >= 0:
                os.close(fd)
    if hasher is not None and hasher.hexdigest() != recorded:
        raise IntegrityError(
            f"{where.url}: SHA-256 {hasher.hexdigest()} does not match the recorded {recorded}"
        )
    data = bytes(buffer) if buffer is not None else b""
    return data, blob_info(where.key, size, props.metadata, props.last_modified)
