"""Local-file helpers shared by the back-ends: error mapping, downloads via part files, sweeps."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from azmanagers.errors import (
    ConfigError,
    IntegrityError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
)
from azmanagers.storage.hashing import CHUNK_BYTES

PART_MARK = ".azm-part-"
"""Downloads land in ``.<name>.azm-part-XXXX`` next to the target, then are renamed; a file
with this in its name was left by a killed download and may be deleted."""

PART_NAME_CHARS = 100
"""Characters of the target's name kept in a part file's name (file names max 255 bytes)."""

DIR_MODE = 0o700
"""Folders we create."""

FILE_MODE = 0o600
"""Files we create."""


@contextlib.contextmanager
def os_errors(what: str) -> Iterator[None]:
    """Map OSError to the storage errors, naming ``what``."""
    try:
        yield
    except (ConfigError, StorageError, IntegrityError):
        raise
    except FileNotFoundError as exc:
        raise StorageNotFoundError(f"{what}: not found ({exc.strerror})") from exc
    except PermissionError as exc:
        raise StorageAccessError(f"{what}: permission denied; check the folder's owner") from exc
    except OSError as exc:
        raise StorageError(f"{what}: {exc.strerror or exc}") from exc


def makedirs(path: Path, stop: Path) -> None:
    """Create ``path`` and its missing parents up to ``stop``, each with mode 0700."""
    if path.is_dir():
        return
    if path != stop and path.parent != path:
        makedirs(path.parent, stop)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)


def open_making_folder(path: str, flags: int, stop: Path) -> tuple[int, bool]:
    """``os.open(path, flags, 0o600)``; when its folder is missing, make it (``makedirs``, up
    to ``stop``) and open again. Returns the descriptor and whether the folder was made.

    Folders that exist cost nothing: they are made only when the open says they are missing.
    """
    try:
        return os.open(path, flags, FILE_MODE), False
    except FileNotFoundError:
        makedirs(Path(os.path.dirname(path)), stop)
    return os.open(path, flags, FILE_MODE), True


def copy_hashing(reader: BinaryIO, temp: str) -> str:
    """Copy the open binary file ``reader`` to ``temp`` in one pass; return the SHA-256 copied."""
    digest = hashlib.sha256()
    with open(temp, "wb") as writer:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def check_local_target(local: Path) -> None:
    """ConfigError naming ``local`` when it is a folder or lies under a regular file."""
    if local.is_dir():
        raise ConfigError(f"local path {local} is a folder; name a file to download into")
    for parent in local.parents:
        if parent.is_dir():
            return
        # another download may make this folder right now: only a non-folder is in the way
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            raise ConfigError(
                f"local path {local}: {parent} is a file, not a folder; choose another path"
            )


def download_to(local: Path, fill: Callable[[str], object]) -> None:
    """Fill a part file next to ``local`` (``fill(temp)``) and rename it to ``local``.

    Local-path problems (a folder in the way, a file where a folder is needed) are ConfigError
    naming ``local``; the part file is removed on any failure.
    """
    local = Path(local)
    check_local_target(local)
    with os_errors(f"local path {local}"):
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise ConfigError(f"local path {local}: cannot create its folder ({exc})") from exc
        prefix = f".{local.name[:PART_NAME_CHARS]}{PART_MARK}"
        fd, temp = tempfile.mkstemp(dir=local.parent, prefix=prefix)
        os.close(fd)
        try:
            fill(temp)
            os.replace(temp, local)
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise ConfigError(f"local path {local} is a folder; name a file") from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def sweep(folder: Path, prefix: str, older_than_s: float) -> None:
    """Remove files in ``folder`` whose names start with ``prefix``, older than ``older_than_s``.

    For temp files left by killed writers; errors are ignored (another sweeper may be faster).
    """
    limit = time.time() - older_than_s
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < limit:
                        os.unlink(entry.path)
