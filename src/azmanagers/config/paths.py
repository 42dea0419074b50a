"""Where azmanagers keeps its files, and how it writes them (atomically, mode 0600)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from azmanagers.errors import ConfigError

logger = logging.getLogger("azmanagers.config")

HOME_ENV = "AZMANAGERS_HOME"
FILE_MODE = 0o600
DIR_MODE = 0o700


def home() -> Path:
    """Return AZMANAGERS_HOME (default ``~/.azmanagers``); it is not created."""
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".azmanagers"


NODE_DIR_ENV = "AZM_BATCH_NODE_DIR"
"""Where a node keeps its batch cache and run folders (default ``~/.azm-batch``)."""
EVICTION_FLAG = "evicting"
"""A file in the node's folder: the agent writes it on an eviction notice; runs stop."""


def node_work_dir() -> Path:
    """This node's batch folder (on a VM or process-VM; created 0700, once per process)."""
    root = Path(os.environ.get(NODE_DIR_ENV) or Path.home() / ".azm-batch")
    if root not in _MADE:
        root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        _MADE.add(root)
    return root


_MADE: set[Path] = set()
"""Node folders this process made already (batch runs ask for them on every run)."""


def eviction_flag() -> Path:
    """The file whose presence tells runs on this node that it is being evicted."""
    return node_work_dir() / EVICTION_FLAG


def active_runs_dir() -> Path:
    """A folder holding one file per batch attempt running on this node (the agent waits for
    it to empty after an eviction notice, so runs keep their logs)."""
    path = node_work_dir() / "active"
    if path not in _MADE:
        path.mkdir(exist_ok=True, mode=DIR_MODE)
        _MADE.add(path)
    return path


def state_dir() -> Path:
    """Return the state folder (clusters, local instances, environments), creating it."""
    return ensure_dir(home() / "state")


def ensure_dir(path: Path) -> Path:
    """Create ``path`` if needed; raise ConfigError when it cannot be written.

    Every folder it creates, the missing parents included, is mode 0700 whatever the
    umask; folders that were there are left as they are.
    """
    try:
        missing = []
        for folder in (path, *path.parents):
            if folder.exists():
                break
            missing.append(folder)
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
                folder.mkdir(mode=DIR_MODE)
                os.chmod(folder, DIR_MODE)  # the umask may have taken bits from mkdir's mode
        if not path.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(path))
    except OSError as exc:
        raise ConfigError(
            f"cannot create {path}: {exc.strerror}. Set {HOME_ENV} to a writable folder."
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{path} is not writable. Set {HOME_ENV} to a writable folder.")
    return path


def atomic_write_text(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, with ``mode``.

    Either the old file or the whole new one is there afterwards, never half of it.
    """
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror}. Set {HOME_ENV} to a writable folder."
        ) from exc
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-change-write of ``path`` (other processes wait).

    The lock is ``flock`` on ``.<name>.lock`` beside the file (mode 0600), so two savers
    each see the other's change instead of overwriting it.
    """
    ensure_dir(path.parent)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise ConfigError(
            f"cannot lock {path} ({lock_path}: {exc.strerror}). Set {HOME_ENV} to a writable "
            "folder."
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically, mode 0600."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


_WARNED_MODES: set[str] = set()


def private_file(path: Path) -> None:
    """Make a config file found readable or writable by others 0600, warning once per file.

    Config files may hold secrets (a template's custom data, tags, key paths).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & 0o077:
            return
        os.chmod(path, FILE_MODE)
    except OSError:
        return  # not ours to change (or gone): reading it says what is wrong, if anything
    if str(path) not in _WARNED_MODES:
        _WARNED_MODES.add(str(path))
        logger.warning(
            "%s was mode %s (others could read it); made it 0600, as azmanagers writes it.",
            path,
            oct(mode),
        )


def read_json(path: Path, *, default: Any = None) -> Any:
    """Read a JSON file; a missing file gives ``default``; corrupt JSON raises ConfigError.

    Parameters
    ----------
    path : Path
        The file to read (UTF-8 JSON).
    default : object, optional
        What a missing file gives, by default None.

    Returns
    -------
    object
        The file's data, or ``default``.

    Raises
    ------
    ConfigError
        The file cannot be read, is not UTF-8, is not JSON, nests too deeply or holds a
        number too long to convert; the message names it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}. Set {HOME_ENV} to a writable folder."
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}). "
            "Fix or remove the file (save it as UTF-8)."
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            "Fix or remove the file."
        ) from exc
    except RecursionError:
        raise ConfigError(
            f"{path} nests its JSON too deeply to be read. Fix or remove the file."
        ) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ConfigError(
            f"{path} cannot be read as JSON ({exc}). Fix or remove the file."
        ) from exc
