"""SHA-256 content hashes of files and bytes, read in 1 MiB chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20
"""Bytes read per call while hashing (1 MiB)."""

HEX_LENGTH = 64
"""Characters in a SHA-256 hex digest."""


def sha256_file(path: Path) -> str:
    """Return the lower-case hex SHA-256 of the file at ``path``.

    Parameters
    ----------
    path : Path
        The file to read, in chunks of ``CHUNK_BYTES``.

    Returns
    -------
    str
        64 lower-case hex characters.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def is_sha256(text: str) -> bool:
    """Tell whether ``text`` looks like a lower-case hex SHA-256 digest."""
    return len(text) == HEX_LENGTH and all(c in "0123456789abcdef" for c in text)


MALFORMED = "malformed"
"""What read_recorded returns for a recorded hash that is there but not a SHA-256."""


def read_recorded(value: str | None) -> str | None:
    """Return a recorded hash in its one form: lower-case hex, None when none, or MALFORMED.

    The one rule for every back-end: a recorded value is lower-cased; a value that is then
    not 64 hex characters is MALFORMED (``stat``/``list`` say ``sha256=None`` for it and a
    verified read raises IntegrityError); only a missing value means "written by someone else".
    """
    if value is None:
        return None
    text = value.strip().lower()
    return text if is_sha256(text) else MALFORMED
