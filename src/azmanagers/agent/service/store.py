"""The detached service's job records, in SQLite on the VM's disk: they survive a restart."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from azmanagers.detached.wire import FINISHED_STATUSES, JOB_STATUSES, JobInfo

STATUSES = JOB_STATUSES
"""``queued``: accepted, its process not started yet; ``running``: its process runs;
``succeeded``: it returned (a function's value is kept) or its code ran to the end;
``failed``: it raised (type, message and traceback are kept), exited non-zero, or its process
died while the service was down; ``killed``: stopped by a kill request."""
FINISHED = FINISHED_STATUSES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    pid INTEGER,
    pid_started_at REAL,
    exit_code INTEGER,
    error_type TEXT,
    error_message TEXT,
    persist INTEGER NOT NULL DEFAULT 1
)
"""


@dataclass(frozen=True)
class JobRecord(JobInfo):
    """One job as the service keeps it: what the API shows, plus the process's start time."""

    pid_started_at: float | None = None
    """The process's start time (psutil): tells the job's process from a reused pid."""

    def info(self) -> JobInfo:
        """The record as the API shows it."""
        shown = {f.name: getattr(self, f.name) for f in fields(JobInfo)}
        return JobInfo(**shown)

    def public(self) -> dict[str, Any]:
        """The record as the API's JSON."""
        return self.info().to_json()


_COLUMNS = tuple(f.name for f in fields(JobRecord))


class JobStore:
    """Job records in one SQLite file; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        path.chmod(0o600)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def remove(self, job_id: str) -> None:
        """Delete a record (a job that could not be made whole)."""
        with self._locked() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", [job_id])

    def add(self, record: JobRecord) -> None:
        """Insert a new record."""
        values = [getattr(record, c) for c in _COLUMNS]
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._locked() as db:
            db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})", values)

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Change some fields of a record; return it."""
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        if "status" in changes and changes["status"] not in STATUSES:
            raise ValueError(f"unknown status {changes['status']!r}")
        assignments = ", ".join(f"{k} = ?" for k in changes)
        with self._locked() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*changes.values(), job_id])
        found = self.get(job_id)
        if found is None:
            raise KeyError(job_id)
        return found

    def finish(self, job_id: str, status: str, **changes: Any) -> JobRecord:
        """Mark a job finished (unless it already is: the first outcome wins)."""
        with self._locked() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is not None and row[0] in FINISHED:
            found = self.get(job_id)
            assert found is not None
            return found
        return self.update(job_id, status=status, finished_at=time.time(), **changes)

    def get(self, job_id: str) -> JobRecord | None:
        """Return the record, or None."""
        with self._locked() as db:
            row = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", [job_id]
            ).fetchone()
        return _record(row) if row else None

    def all(self) -> list[JobRecord]:
        """Every record, oldest first."""
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created_at"
            ).fetchall()
        return [_record(r) for r in rows]

    def close(self) -> None:
        """Close the database."""
        with self._locked() as db:
            db.close()


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["persist"] = bool(values["persist"])
    return JobRecord(**values)
