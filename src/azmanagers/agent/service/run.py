"""Runs ONE detached job, in its own process: ``python -m azmanagers.agent.service.run JOB_DIR``.

The service writes the job's input to ``JOB_DIR`` without unpickling it: a function call
(``call.pkl``: cloudpickled ``(function, args, kwargs)``) or a code string (``job.py``).
This process runs it in ``JOB_DIR/work`` and writes the outcome: ``outcome.json`` (status,
and for a failure the exception's type, message and traceback text) and, for a function,
``result.pkl`` (its cloudpickled return value). The exit status is 0 on success, 1 on failure.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from pathlib import Path
from typing import Any

CALL_FILE = "call.pkl"
CODE_FILE = "job.py"
RESULT_FILE = "result.pkl"
OUTCOME_FILE = "outcome.json"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run(job_dir: Path) -> Any:
    call = job_dir / CALL_FILE
    if call.exists():
        import cloudpickle

        function, args, kwargs = cloudpickle.loads(call.read_bytes())
        return function(*args, **kwargs)
    runpy.run_path(str(job_dir / CODE_FILE), run_name="__main__")
    return None


def main(argv: list[str]) -> int:
    """Run the job in ``argv[0]``; return the exit status."""
    job_dir = Path(argv[0]).resolve()
    try:
        result = _run(job_dir)
        if (job_dir / CALL_FILE).exists():
            import cloudpickle

            _write_atomically(job_dir / RESULT_FILE, cloudpickle.dumps(result))
        outcome: dict[str, Any] = {"status": "succeeded"}
        status = 0
    except BaseException as exc:  # the job's own failure, whatever it is, is its outcome
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            outcome, status = {"status": "succeeded"}, 0
        else:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sys.stderr.write(text)
            outcome = {
                "status": "failed",
                "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "error_message": str(exc),
                "traceback": text,
            }
            status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    _write_atomically(job_dir / OUTCOME_FILE, json.dumps(outcome).encode())
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
