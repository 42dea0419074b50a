"""Outputs of an attempt: which files match a run's output patterns, uploaded by condition."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from azmanagers.batch.model import Output
from azmanagers.batch.records import OutputFile
from azmanagers.errors import ConfigError
from azmanagers.storage.base import Storage, check_key


@dataclass(frozen=True)
class OutputUpload:
    """What ``upload_outputs`` stored, and the selected files it could not store."""

    files: tuple[OutputFile, ...]
    skipped: tuple[str, ...] = ()
    """Run-dir paths no storage key may hold (a tab, a backslash, a ``.azm-`` part...)."""

    @property
    def error(self) -> str:
        """A message for the run's record naming the skipped files ("" when none)."""
        if not self.skipped:
            return ""
        names = ", ".join(repr(s) for s in self.skipped[:10])
        more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        return (
            f"outputs not uploaded, their names cannot be storage keys: {names}{more}; "
            "name outputs without control characters, backslashes or parts starting '.azm-'."
        )


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a run-dir glob: ``*`` and ``?`` stay in one folder, ``**`` crosses folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)  # a name may hold a newline


def run_files(run_dir: Path) -> list[str]:
    """Every regular file under ``run_dir`` (relative, "/"-separated), links to outside skipped.

    Shared inputs are links into the node cache: they are inputs, not outputs.
    """
    found = []
    root = run_dir.resolve()
    for folder, dirs, names in os.walk(run_dir, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            if path.is_symlink():
                try:
                    path.resolve().relative_to(root)
                except (ValueError, OSError, RuntimeError):  # outside, or a link loop
                    continue
            if path.is_file():
                found.append(path.relative_to(run_dir).as_posix())
    return found


def selected(outputs: Sequence[Output], files: Sequence[str], *, succeeded: bool) -> list[str]:
    """The files to upload: those matching a pattern whose condition holds for this outcome."""
    conditions = {"always", "success" if succeeded else "failure"}
    regexes = [glob_regex(o.pattern) for o in outputs if o.when in conditions]
    return [f for f in files if any(r.match(f) for r in regexes)]


def upload_outputs(
    storage: Storage,
    run_dir: Path,
    outputs: Sequence[Output],
    prefix: str,
    *,
    succeeded: bool,
) -> OutputUpload:
    """Upload the selected outputs under ``prefix`` in parallel; their records, by path.

    A file whose name cannot be a storage key is skipped (and named in ``skipped``): the
    others are uploaded all the same.
    """
    if not outputs:
        return OutputUpload(())
    chosen, skipped = [], []
    for rel in selected(outputs, run_files(run_dir), succeeded=succeeded):
        try:
            check_key(prefix + rel)
        except ConfigError:
            skipped.append(rel)
        else:
            chosen.append(rel)
    if not chosen:
        return OutputUpload((), tuple(skipped))
    infos = storage.put_files([(run_dir / rel, prefix + rel) for rel in chosen])
    files = tuple(
        OutputFile(rel, info.key, storage.url_for(info.key), info.sha256 or "", info.size)
        for rel, info in zip(chosen, infos, strict=True)
    )
    return OutputUpload(files, tuple(skipped))


def collect_outputs(
    storage: Storage,
    run_dir: Path,
    outputs: Sequence[Output],
    prefix: str,
    *,
    succeeded: bool,
) -> tuple[OutputFile, ...]:
    """``upload_outputs(...).files``: the uploaded outputs (files that cannot be keys left out)."""
    return upload_outputs(storage, run_dir, outputs, prefix, succeeded=succeeded).files
