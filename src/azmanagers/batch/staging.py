"""Staging a job's inputs, shared inputs, overlays and packages into storage, by content hash."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from azmanagers.errors import ConfigError, StorageError, StorageNotFoundError
from azmanagers.storage import open_storage
from azmanagers.storage.base import Storage, check_key, is_storage_url
from azmanagers.storage.hashing import sha256_file

BLOBS = "inputs/sha256"
TREES = "inputs/trees"
BIG_FILE_BYTES = 8 * 2**20
"""Files at least this big are uploaded with their known hash (not hashed a second time)."""
MAX_TREE_FILES = 200_000
"""A folder input with more files than this is refused (zip it: one archive stages faster)."""
_URL_QUERY = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:/[^\s'\"?#]*)[?#][^\s'\"]*")


def redact(text: str, source: str = "") -> str:
    """``text`` without the query string (a SAS, say) of any URL in it, or of ``source``."""
    query = source.partition("?")[2] if "://" in source else ""
    if query:
        text = text.replace(query, "...")
    return _URL_QUERY.sub(r"\1?...", text)


@dataclass(frozen=True)
class InputRef:
    """A staged input: where it came from, where it goes in the run dir, where it is stored."""

    source: str
    dest: str
    """Path relative to the run dir ("" for a folder whose contents go in the run dir)."""
    key: str
    """The stored file, or the tree manifest of a folder (keys relative to the storage root)."""
    sha256: str
    size: int
    tree: bool
    mode: int = 0o644

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputRef:
        return cls(**data)


@dataclass(frozen=True)
class TreeFile:
    """One file of a staged folder."""

    rel: str
    sha256: str
    size: int
    mode: int


def blob_key(prefix: str, sha256: str) -> str:
    """Where a file with this hash is stored under a job's prefix."""
    return f"{prefix}{BLOBS}/{sha256[:2]}/{sha256}"


def dest_for(source: str) -> str:
    """Where an input lands in the run dir: a file or folder by its name; ``dir/`` by contents."""
    if source.endswith("/"):
        return ""
    name = source.rstrip("/").rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        raise ConfigError(f"input {source!r} has no name to place it under; name a file or folder.")
    return name


def tree_manifest(files: Iterable[TreeFile]) -> bytes:
    rows = sorted([f.rel, f.sha256, f.size, f.mode] for f in files)
    return json.dumps({"files": rows}, separators=(",", ":")).encode()


def parse_manifest(raw: bytes) -> list[TreeFile]:
    data = json.loads(raw)
    return [TreeFile(str(r), str(h), int(s), int(m)) for r, h, s, m in data["files"]]


class Stager:
    """Uploads local files and folders (and copies storage URLs) into a job's ``inputs/``.

    Each distinct content is uploaded once: what the job's storage already holds (listed once)
    is skipped. ``refs`` maps every staged source (as given) to its ``InputRef``.

    In a folder input, a link to a file (inside the folder or outside it) is followed: its
    content is staged under the link's name, as ``cp -rL`` would. A link to a folder, a link
    loop or a broken link is refused (``ConfigError`` naming it): copy the folder in, or give
    it as its own input. Other special files (FIFOs, sockets, devices) are not staged. Error
    messages never show a URL's query string (a SAS).
    """

    def __init__(self, storage: Storage, prefix: str, *, base: Path | None = None) -> None:
        self.storage = storage
        self.prefix = prefix
        self.base = base or Path.cwd()
        self.refs: dict[str, InputRef] = {}
        self.placed: dict[str, tuple[str, ...]] = {}
        """Every staged source's files as paths in the run folder (a tree's, file by file)."""
        self._tree_rels: dict[str, list[str]] = {}
        self._have = {info.key.rsplit("/", 1)[-1] for info in storage.list(f"{prefix}{BLOBS}/")}
        self._pending: dict[str, Path] = {}
        self.uploaded_bytes = 0

    def add(self, source: str, *, dest: str | None = None) -> InputRef:
        """Stage ``source`` (a local path, relative to ``base``, or a storage URL)."""
        if source in self.refs:
            return self.refs[source]
        try:
            ref = self._add(source, dest)
        except (ConfigError, StorageError) as exc:
            text = redact(str(exc), source)
            if text == str(exc):
                raise
            raise type(exc)(text) from None
        self.refs[source] = ref
        rels = self._tree_rels.pop(source, []) if ref.tree else [""]
        self.placed[source] = tuple("/".join(p for p in (ref.dest, r) if p) for r in rels)
        return ref

    def _add(self, source: str, dest: str | None) -> InputRef:
        where = dest_for(source) if dest is None else dest
        if is_storage_url(source):
            return self._add_url(source, where)
        if "://" in source:
            raise ConfigError(
                f"input {source!r} is neither a local path nor a storage URL; use "
                "file:///absolute/path or az://container/path (credentials come from the "
                "environment, not from the URL)."
            )
        path = Path(source).expanduser()
        path = path if path.is_absolute() else self.base / path
        if not path.exists():
            raise ConfigError(
                f"input {source!r} does not exist (looked at {path}); check the path, which is "
                "relative to the current folder (or to the spec file's folder)."
            )
        if path.is_dir():
            return self._add_tree(source, path, where)
        return self._add_file(source, path, where)

    def _add_file(self, source: str, path: Path, dest: str) -> InputRef:
        digest = sha256_file(path)
        self._want(digest, path)
        mode = stat.S_IMODE(path.stat().st_mode)
        return InputRef(
            source, dest, blob_key(self.prefix, digest), digest, path.stat().st_size, False, mode
        )

    def _add_tree(self, source: str, root: Path, dest: str) -> InputRef:
        files: list[TreeFile] = []
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            for name in dirs:
                if Path(folder, name).is_symlink():
                    raise ConfigError(
                        f"input {source!r} holds {Path(folder, name)}, a link to a folder, "
                        "which is not followed: copy it in, or give it as its own input."
                    )
            for name in sorted(names):
                path = Path(folder, name)
                if path.is_symlink() and not path.exists():
                    raise ConfigError(f"input {source!r} holds {_broken(path)}; remove it.")
                if not path.is_file():
                    continue
                digest = sha256_file(path)
                self._want(digest, path)
                rel = path.relative_to(root).as_posix()
                files.append(
                    TreeFile(rel, digest, path.stat().st_size, stat.S_IMODE(path.stat().st_mode))
                )
                if len(files) > MAX_TREE_FILES:
                    raise ConfigError(
                        f"input {source!r} holds more than {MAX_TREE_FILES} files; pack it into "
                        "one archive (tar or zip) and unpack it in the command."
                    )
        return self._store_tree(source, dest, files)

    def _store_tree(self, source: str, dest: str, files: list[TreeFile]) -> InputRef:
        self._tree_rels[source] = [f.rel for f in files]
        raw = tree_manifest(files)
        digest = hashlib.sha256(raw).hexdigest()
        key = f"{self.prefix}{TREES}/{digest}.json"
        if self.storage.stat(key) is None:
            self.storage.put_bytes(key, raw)
        return InputRef(source, dest, key, digest, sum(f.size for f in files), True, 0o755)

    def _want(self, digest: str, path: Path) -> None:
        if digest not in self._have:
            self._pending.setdefault(digest, path)

    def _add_url(self, url: str, dest: str) -> InputRef:
        parent, _, name = url.rstrip("/").rpartition("/")
        try:
            source_root = open_storage(parent)
        except ConfigError as exc:
            raise ConfigError(f"input {url!r}: {exc}") from None
        try:
            info = source_root.stat(name) if name and not url.endswith("/") else None
            with tempfile.TemporaryDirectory(prefix="azm-stage-") as tmp:
                if info is not None:
                    local = Path(tmp, "file")
                    source_root.get_file(name, local)
                    ref = self._add_file(url, local, dest)
                    self.flush()
                    return ref
                tree_root = open_storage(url.rstrip("/"))
                infos = list(tree_root.list(""))
                if not infos:
                    raise StorageNotFoundError(f"input {url} names nothing in storage.")
                for found in infos:
                    try:
                        check_key(found.key)
                    except ConfigError as exc:
                        raise ConfigError(
                            f"input {url!r} holds {found.key!r}, which cannot be staged ({exc}); "
                            "rename or remove it in storage, or give the other files as inputs."
                        ) from None
                pairs = [(i.key, Path(tmp, "tree", i.key)) for i in infos]
                tree_root.get_files(pairs)
                ref = self._add_tree(url, Path(tmp, "tree"), dest)
                self.flush()
                return ref
        finally:
            source_root.close()

    def flush(self) -> None:
        """Upload what is wanted and not yet stored: small files together in parallel, big
        ones one by one with the hash already known (each in parallel blocks)."""
        small: list[tuple[Path, str]] = []
        for digest, path in self._pending.items():
            key = blob_key(self.prefix, digest)
            if path.stat().st_size >= BIG_FILE_BYTES:
                self.uploaded_bytes += self.storage.put_file(path, key, sha256=digest).size
            else:
                small.append((path, key))
        if small:
            self.uploaded_bytes += sum(i.size for i in self.storage.put_files(small))
        self._have.update(self._pending)
        self._pending.clear()


def _broken(path: Path) -> str:
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path}, a link loop (copy it in, or give it as its own input)"
    return f"a broken link {path}"
