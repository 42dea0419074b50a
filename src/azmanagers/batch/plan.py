"""A job's plan: how each run of its sweep becomes a task, and the submission's identity."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from azmanagers.batch.runner import PackageRef, RunTask
from azmanagers.batch.staging import InputRef
from azmanagers.batch.sweep import RunSpec, Sweep
from azmanagers.errors import BatchError
from azmanagers.storage.base import Grant


@dataclass(frozen=True)
class Plan:
    """How to turn each run of a sweep into a task: what was staged, and the model's limits."""

    job: str
    prefix: str
    sweep: Sweep
    refs: Mapping[str, InputRef]
    shared: tuple[InputRef, ...]
    packages: tuple[PackageRef, ...]
    session: str = ""
    """The submission id made when the job was prepared ("" for a fresh one)."""
    root: str = ""
    """The storage URL the job was submitted to (what ``attach`` and ``--storage`` take)."""
    companion: Plan | None = None
    """A ``MasterWorker`` job's worker plan (its worker sweep; same job, prefix and session)."""

    def task(self, spec: RunSpec, attempt: int, grant: Grant, session: str) -> RunTask:
        model = self.sweep.model
        return RunTask(
            job=self.job,
            session=session,
            run_id=spec.run_id,
            attempt=attempt,
            command=spec.command,
            env=tuple(sorted(spec.env.items())),
            grant=grant,
            prefix=self.prefix,
            inputs=tuple(self.refs[s] for s in spec.inputs),
            shared=self.shared,
            overlay=None if spec.overlay is None else self.refs[spec.overlay],
            packages=self.packages,
            outputs=spec.outputs,
            timeout_s=model.timeout_s,
        )


class TakenOverError(BatchError):
    """Another driver wrote the job record: two drivers must not feed one job."""


def new_session() -> str:
    """A fresh submission id."""
    return uuid.uuid4().hex[:12]
