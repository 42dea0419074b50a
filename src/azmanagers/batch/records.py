"""A batch job's records in storage: the job record, one record per run, and where logs go."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from azmanagers.errors import BatchError, StorageError, StorageNotFoundError
from azmanagers.storage.base import Storage

logger = logging.getLogger("azmanagers.batch")

SCHEMA_VERSION = 1
RUN_STATES = ("pending", "staging", "running", "uploading", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
READ_THREADS = 16
"""Run records read in parallel by ``runs()``."""


@dataclass(frozen=True)
class OutputFile:
    """One uploaded output of a run: its key in storage, URL, hash and size."""

    path: str
    key: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Attempt:
    """One attempt of a run on one node."""

    number: int
    node: str
    started: float
    ended: float
    exit_code: int | None
    reason: str
    """``exit``, ``timeout``, ``cancelled``, ``lost`` (the worker went away) or ``error``."""
    stdout_key: str = ""
    stderr_key: str = ""
    error: str = ""


@dataclass(frozen=True)
class RunRecord:
    """A run's record, the truth for ``status``, ``runs`` and ``download``."""

    job: str
    run_id: str
    params: Mapping[str, str]
    status: str
    attempts: tuple[Attempt, ...] = ()
    requeues: int = 0
    exit_code: int | None = None
    node: str = ""
    started: float = 0.0
    ended: float = 0.0
    outputs: tuple[OutputFile, ...] = ()
    error: str = ""
    updated_at: float = field(default_factory=time.time)
    attempt: int = 0
    """The number of the last attempt handed out (0: none yet): a driver that resumes the run
    numbers its next attempt after it, also when the one in progress never reported."""
    members: tuple[Attempt, ...] = ()
    """A multi-node run's other members in its last attempt (master/worker: the workers; MPI:
    the nodes but the primary), each with its node, outcome and logs."""

    @property
    def duration_s(self) -> float:
        """Seconds from the first start to the end (0 while not ended)."""
        return max(0.0, self.ended - self.started) if self.ended and self.started else 0.0

    def to_json(self) -> bytes:
        return _dumped(self)

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> RunRecord:
        data = _load(raw, where)
        try:
            data["attempts"] = tuple(Attempt(**a) for a in data.get("attempts", ()))
            data["members"] = tuple(Attempt(**a) for a in data.get("members", ()))
            data["outputs"] = tuple(OutputFile(**o) for o in data.get("outputs", ()))
            data["params"] = dict(data.get("params", {}))
            record = cls(**data)
            _check_fields(record)
            for item in (*record.attempts, *record.members, *record.outputs):
                _check_fields(item)
        except (TypeError, ValueError, AttributeError) as exc:
            raise BatchError(
                f"{where} is not a run record this version reads ({exc}); it is damaged: "
                "delete it to run that run again."
            ) from exc
        if record.status not in RUN_STATES or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in record.params.items()
        ):
            raise BatchError(f"{where} has a bad status or parameters; it is damaged.")
        return record


@dataclass(frozen=True)
class JobRecord:
    """A job's record: what was submitted (its definition and digest), its status and counts."""

    name: str
    digest: str
    definition: Mapping[str, Any]
    total: int
    status: str = "submitted"
    counts: Mapping[str, int] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    session: str = ""
    """The submission now driving the job (what ``cancel`` names)."""
    driver: str = ""
    """Where the job's driver runs (``host:pid``, or ``detached:<vm>/<job id>``)."""
    cluster: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    """What was staged: local path or URL -> its reference in storage (see ``staging``)."""
    message: str = ""

    def to_json(self) -> bytes:
        return _dumped(self)

    @classmethod
    def from_json(cls, raw: bytes, *, where: str) -> JobRecord:
        data = _load(raw, where)
        try:
            record = cls(**data)
            _check_fields(record)
            if not all(isinstance(k, str) and type(v) is int for k, v in record.counts.items()):
                raise ValueError("counts must map states to whole numbers")
        except (TypeError, ValueError, AttributeError) as exc:
            raise BatchError(
                f"{where} is not a job record this version reads ({exc}); it is damaged: "
                "submit the job again under a new name, or restore the file."
            ) from exc
        return record

    def with_counts(self, counts: Mapping[str, int], status: str | None = None) -> JobRecord:
        return replace(
            self, counts=dict(counts), status=status or self.status, updated_at=time.time()
        )


_SIMPLE: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
}


def _check_fields(record: object) -> None:
    """Raise ValueError when a field of a record read from JSON has the wrong simple type."""
    for f in fields(record):  # type: ignore[arg-type]
        value = getattr(record, f.name)
        declared = str(f.type)
        if declared.endswith("| None") and value is None:
            continue
        wanted = _SIMPLE.get(declared.removesuffix(" | None"))
        if wanted is not None and (
            not isinstance(value, wanted) or (wanted is int and isinstance(value, bool))
        ):
            raise ValueError(f"{f.name} must be {declared}, not {type(value).__name__}")
        if declared.startswith("Mapping") and not isinstance(value, Mapping):
            raise ValueError(f"{f.name} must be an object")


def _dumped(record: RunRecord | JobRecord) -> bytes:
    """A record as the JSON kept in storage, with its schema version."""
    data = asdict(record)
    data["schema_version"] = SCHEMA_VERSION
    return json.dumps(data, sort_keys=True, indent=1).encode()


def _load(raw: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BatchError(f"{where} is not valid JSON ({exc}); it may be damaged.") from exc
    if not isinstance(data, dict):
        raise BatchError(f"{where} is not a record (a JSON object was expected).")
    version = data.pop("schema_version", None)
    if version != SCHEMA_VERSION:
        raise BatchError(
            f"{where} has schema version {version!r}; this azmanagers reads version "
            f"{SCHEMA_VERSION}. Use the azmanagers version that wrote it."
        )
    return data


class JobStore:
    """Reads and writes one job's records in its space (``storage.spaces.job_space``)."""

    def __init__(self, space: Storage, name: str) -> None:
        self.storage = space
        self.name = name
        self.prefix = ""
        """Keys are relative to the space; kept so that a layout with a prefix stays one edit."""

    # -- keys ---------------------------------------------------------------------------
    @property
    def job_key(self) -> str:
        return f"{self.prefix}job.json"

    @property
    def cancel_key(self) -> str:
        return f"{self.prefix}cancel"

    def run_key(self, run_id: str) -> str:
        return f"{self.prefix}runs/{run_id}/run.json"

    # -- the job ------------------------------------------------------------------------
    def read_job(self) -> JobRecord | None:
        try:
            raw = self.storage.get_bytes(self.job_key)
        except StorageNotFoundError:
            return None
        return JobRecord.from_json(raw, where=self.storage.url_for(self.job_key))

    def write_job(self, record: JobRecord) -> None:
        self.storage.put_bytes(self.job_key, record.to_json())

    def request_cancel(self, session: str) -> None:
        """Ask the driver of submission ``session`` to cancel (a later submission is unaffected;
        nothing is ever deleted, which a worker's credential could not do)."""
        self.storage.put_bytes(self.cancel_key, session.encode())

    def cancel_requested(self, session: str) -> bool:
        try:
            return self.storage.get_bytes(self.cancel_key).decode(errors="replace") == session
        except StorageNotFoundError:
            return False

    # -- runs ---------------------------------------------------------------------------
    def read_run(self, run_id: str) -> RunRecord | None:
        key = self.run_key(run_id)
        try:
            raw = self.storage.get_bytes(key)
        except StorageNotFoundError:
            return None
        return RunRecord.from_json(raw, where=self.storage.url_for(key))

    def write_run(self, record: RunRecord) -> None:
        self.storage.put_bytes(self.run_key(record.run_id), record.to_json())

    def run_ids(self) -> list[str]:
        """The ids of the runs that have a record, sorted."""
        return self.storage.list_dirs(f"{self.prefix}runs/")

    def runs(self) -> Iterator[RunRecord]:
        """Every run record, in run-id order, read in parallel in bounded batches."""
        ids = self.run_ids()
        with ThreadPoolExecutor(READ_THREADS) as pool:
            for start in range(0, len(ids), 256):
                batch = ids[start : start + 256]
                yield from (r for r in pool.map(self._read_quietly, batch) if r is not None)

    def statuses(self) -> dict[str, str]:
        """Run id -> status of every recorded run (what a re-submission skips)."""
        return {r.run_id: r.status for r in self.runs()}

    def _read_quietly(self, run_id: str) -> RunRecord | None:
        try:
            return self.read_run(run_id)
        except (StorageError, BatchError) as exc:
            logger.warning("skipping the record of run %s: %s", run_id, exc)
            return None
