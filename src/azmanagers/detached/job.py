"""A job on a detached VM, seen from any process of the caller: status, output, result, kill."""

from __future__ import annotations

import base64
import codecs
import time
from collections.abc import Iterator
from typing import Any

from azmanagers.config import settings
from azmanagers.detached import wire
from azmanagers.detached.vms import DetachedVM, load_vm
from azmanagers.errors import ConfigError, JobFailedError, WaitTimeoutError

WAIT_STEP_S = 30.0
"""One wait request blocks at most this long; longer waits ask again."""
FOLLOW_POLL_S = 0.5


def check_timeout(timeout: float | None, what: str = "timeout") -> None:
    """Refuse a timeout that is not None nor a finite positive number of seconds."""
    settings.check_timeout(timeout, what, without="leave it out to wait until the job ends")


class DetachedJob:
    """A job on a detached VM. Its state lives on the VM: any process may attach to it."""

    def __init__(self, vm: DetachedVM, job_id: str) -> None:
        self.vm = vm
        self.id = job_id

    def __repr__(self) -> str:
        return f"DetachedJob(vm={self.vm.name!r}, id={self.id!r})"

    @classmethod
    def attach(cls, vm_name: str, job_id: str) -> DetachedJob:
        """Return the job ``job_id`` of the recorded VM ``vm_name`` (checks that it exists)."""
        job = cls(load_vm(vm_name), job_id)
        job.record()
        return job

    def record(self) -> wire.JobInfo:
        """The job's record: status, times, pid, exit code, error type and message."""
        return self.vm.client().job(self.id)

    def info(self) -> dict[str, Any]:
        """``record()`` as a dict."""
        return self.record().to_json()

    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``killed``."""
        return self.record().status

    def read(self, stdio: str = "stdout", offset: int = 0) -> str:
        """Return the job's stdout (or ``stdio="stderr"``) so far, from byte ``offset``."""
        data, _ = self._read_bytes(stdio, offset)
        return data.decode(errors="replace")

    def _read_bytes(self, stdio: str, offset: int) -> tuple[bytes, int]:
        if stdio not in wire.STREAMS:
            raise ConfigError(f"stdio must be 'stdout' or 'stderr', got {stdio!r}.")
        chunks = []
        while True:
            chunk = self.vm.client().output(self.id, stdio, offset)
            chunks.append(chunk.data)
            offset = chunk.next_offset
            if not chunk.data or offset >= chunk.size:
                return b"".join(chunks), offset

    def follow(self, stdio: str = "stdout", poll_s: float = FOLLOW_POLL_S) -> Iterator[str]:
        """Yield the job's output as it comes, until the job has finished."""
        offset = 0
        # A character's bytes may come in two reads: decoded as one stream, never per read.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            finished = self.record().finished
            data, offset = self._read_bytes(stdio, offset)
            text = decoder.decode(data, final=finished)
            if text:
                yield text
            if finished:
                return
            time.sleep(poll_s)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the job finishes (or ``timeout`` seconds pass); return its status.

        Raises ``WaitTimeoutError`` when the job is still running at ``timeout``, and
        ``ConfigError`` when ``timeout`` is not a positive number of seconds.
        """
        check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_STEP_S
            if deadline is not None:
                left = min(WAIT_STEP_S, deadline - time.monotonic())
            record = self.vm.client().wait(self.id, max(left, 0.0))
            if record.finished:
                return record.status
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {self.id} on VM {self.vm.name} is still {record.status} after "
                    f"{timeout:g} s"
                )

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job; return its function's value (None for a code string).

        Raises ``JobFailedError`` (with the VM's traceback) when it failed or was killed.
        """
        self.wait(timeout)
        reply = self.vm.client().result(self.id)
        if reply.job.status == "succeeded":
            if reply.result is None:
                return None
            import cloudpickle

            return cloudpickle.loads(base64.b64decode(reply.result))
        error = reply.error or wire.JobError()
        detail = f"{error.type}: {error.message}" if error.type else ""
        raise JobFailedError(
            f"job {self.id} on VM {self.vm.name} {reply.job.status}"
            + (f": {detail}" if detail else "")
            + (f"\n--- traceback on the VM ---\n{error.traceback}" if error.traceback else ""),
            error_type=error.type,
            remote_traceback=error.traceback,
        )

    def kill(self) -> str:
        """Stop the job's processes (also those in sessions of their own); return its status.

        A job that had finished keeps its status; what it left running (a daemon it started)
        is stopped all the same.
        """
        return self.vm.client().kill(self.id).status
