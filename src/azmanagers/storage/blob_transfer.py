"""Moving one blob: parallel staged blocks up, parallel ranged reads down, SHA-256 checked."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from azure.core import MatchConditions
from azure.storage.blob import BlobBlock, BlobProperties, ContainerClient

from azmanagers.errors import IntegrityError, StorageError
from azmanagers.storage.base import ObjectInfo
from azmanagers.storage.blob_account import BLOCK_BYTES, BLOCK_THREADS, mapped_errors
from azmanagers.storage.hashing import is_sha256

SHA_KEY = "azm_sha256"
"""Blob metadata name holding the object's SHA-256 (lower-case hex)."""


@dataclass(frozen=True)
class Where:
    """The object being moved, for messages: its key, its URL and the account endpoint."""

    key: str
    url: str
    endpoint: str


def blob_info(
    key: str, size: int, metadata: dict[str, str] | None, modified: datetime
) -> ObjectInfo:
    sha = (metadata or {}).get(SHA_KEY)
    return ObjectInfo(
        key=key,
        size=size,
        sha256=sha if sha and is_sha256(sha) else None,
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
    with mapped_errors(where.url, where.endpoint):
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
        done = blob.commit_block_list(
            [BlobBlock(block_id=i) for i in ids], metadata={SHA_KEY: digest}
        )
    return ObjectInfo(where.key, size, digest, stamp(done["last_modified"]))


def download(
    container: ContainerClient,
    blocks: ThreadPoolExecutor,
    name: str,
    where: Where,
    temp: str | None,
    verify: bool,
) -> tuple[bytes, ObjectInfo]:
    """Read blob ``name`` into file ``temp`` (or return its bytes when ``temp`` is None)."""
    with mapped_errors(where.url, where.endpoint):
        first = container.download_blob(name)
        props: BlobProperties = first.properties
        size = first.size
        recorded = (props.metadata or {}).get(SHA_KEY) if verify else None
        hasher = hashlib.sha256() if recorded else None
        out = open(temp, "wb") if temp is not None else None  # noqa: SIM115
        parts: list[bytes] = []
        pending: deque[Future[bytes]] = deque()
        try:
            head = next(iter(first.chunks()), b"") if size > BLOCK_BYTES else first.readall()
            offsets = iter(range(len(head), size, BLOCK_BYTES))

            def fetch(offset: int) -> bytes:
                part = container.download_blob(
                    name,
                    offset=offset,
                    length=min(BLOCK_BYTES, size - offset),
                    etag=props.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                return part.readall()

            chunk: bytes | None = head
            while chunk is not None:
                while len(pending) <= BLOCK_THREADS and (o := next(offsets, None)) is not None:
                    pending.append(blocks.submit(fetch, o))
                if hasher is not None:
                    hasher.update(chunk)
                if out is not None:
                    out.write(chunk)
                else:
                    parts.append(chunk)
                chunk = pending.popleft().result() if pending else None
        finally:
            for future in pending:
                future.cancel()
            if out is not None:
                out.close()
    if hasher is not None and hasher.hexdigest() != recorded:
        raise IntegrityError(
            f"{where.url}: SHA-256 {hasher.hexdigest()} does not match the recorded {recorded}"
        )
    return b"".join(parts), blob_info(where.key, size, props.metadata, props.last_modified)
