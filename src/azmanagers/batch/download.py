"""Downloading runs' outputs and logs into a folder, every path checked before any fetch."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from azmanagers.batch.records import RunRecord
from azmanagers.errors import ConfigError, IntegrityError
from azmanagers.storage.base import Storage
from azmanagers.storage.hashing import sha256_file

LOGS_FOLDER = "_logs"
"""A run's stdout.txt and stderr.txt go in DIR/<run id>/_logs/, apart from its outputs (a
model may well write a stdout.txt of its own)."""


@dataclass(frozen=True)
class Fetch:
    """One file of a download: its key in storage, its place, its recorded hash ("" if none)."""

    key: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Downloaded:
    """What a download left in the folder: every file's path, and how many were fetched."""

    paths: list[Path]
    fetched: int


def download_runs(
    storage: Storage, records: Iterable[RunRecord], dest: Path, *, overwrite: bool
) -> Downloaded:
    """Fetch each run's outputs into ``dest/<run id>/`` and its last logs into ``_logs/``.

    Everything is checked before the first fetch: paths from the records (which a worker's
    credential could have written) must stay in their run's folder and not meet; links in
    ``dest`` must not lead out; a local file with other content is replaced only when
    ``overwrite``; a file with the same content is kept.
    """
    fetches = plan(records, dest, storage)
    pairs = _to_fetch(fetches, storage, overwrite)
    storage.get_files(pairs)
    return Downloaded([f.path for f in fetches], len(pairs))


def plan(records: Iterable[RunRecord], dest: Path, storage: Storage) -> list[Fetch]:
    """Every file of the download, checked; IntegrityError for altered records."""
    inside = dest.resolve()
    fetches: list[Fetch] = []
    seen: dict[Path, str] = {}
    for record in records:
        run_id = record.run_id
        if not _is_part(run_id):
            raise IntegrityError(
                f"a run record names the run {run_id!r}, which is not a folder name: the job's "
                "records were altered; nothing was downloaded."
            )
        files = [(o.key, o.path, o.sha256) for o in record.outputs]
        if record.attempts:
            last = record.attempts[-1]
            logs = ((last.stdout_key, "stdout.txt"), (last.stderr_key, "stderr.txt"))
            files += [(key, f"{LOGS_FOLDER}/{name}", "") for key, name in logs if key]
        for key, rel, sha in files:
            where = _inside_run(rel)
            if where is None:
                raise IntegrityError(
                    f"the record of run {run_id!r} puts {storage.url_for(key)} at {rel!r}, "
                    "outside the run's folder: the job's records were altered; nothing was "
                    "downloaded."
                )
            path = dest / run_id / where
            if path in seen:
                raise IntegrityError(
                    f"two files of run {run_id!r} land on {path} ({seen[path]} and {key}): the "
                    "job's records were altered; nothing was downloaded."
                )
            seen[path] = key
            if not path.resolve().is_relative_to(inside):
                raise ConfigError(
                    f"{path} leads outside {dest} (a link there); remove the link or download "
                    "into another folder. Nothing was downloaded."
                )
            fetches.append(Fetch(key, path, sha))
    return fetches


def _is_part(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _inside_run(rel: str) -> str | None:
    """``rel`` normalised, or None when it is empty, absolute, leaves its folder or has NUL."""
    if not rel or "\0" in rel or os.path.isabs(rel):
        return None
    where = os.path.normpath(rel)
    if where in (".", "..") or where.startswith(("../", "/")):
        return None
    return where


def _to_fetch(fetches: list[Fetch], storage: Storage, overwrite: bool) -> list[tuple[str, Path]]:
    """What to fetch: what is missing locally, or different (an error unless ``overwrite``)."""
    pairs: list[tuple[str, Path]] = []
    differ: list[Path] = []
    for f in fetches:
        blocked = _blocking_file(f.path)
        if blocked is not None:
            raise ConfigError(
                f"{blocked} is a file where the download needs a folder (for {f.path}); move "
                "it, or download into another folder. Nothing was downloaded."
            )
        if f.path.is_dir() and not f.path.is_symlink():
            raise ConfigError(
                f"{f.path} is a folder where the download puts a file; move it, or download "
                "into another folder. Nothing was downloaded."
            )
        if not os.path.lexists(f.path):
            pairs.append((f.key, f.path))
            continue
        stored = f.sha256 or _stored_sha256(storage, f.key)
        if f.path.is_file() and stored and sha256_file(f.path) == stored:
            continue
        if not overwrite:
            differ.append(f.path)
        pairs.append((f.key, f.path))
    if differ:
        raise ConfigError(
            f"{len(differ)} file(s) in the download folder differ from the job's (first: "
            f"{differ[0]}); download into another folder, or overwrite them (overwrite=True, "
            "`--overwrite`). Nothing was downloaded."
        )
    return pairs


def _blocking_file(path: Path) -> Path | None:
    """The first parent of ``path`` that exists and is not a folder, if any."""
    for parent in reversed(path.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            return parent
    return None


def _stored_sha256(storage: Storage, key: str) -> str:
    """The SHA-256 storage keeps for ``key`` ("" when there is none, or no object)."""
    info = storage.stat(key)
    return info.sha256 if info is not None and info.sha256 else ""
