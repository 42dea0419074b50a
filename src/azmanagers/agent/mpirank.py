"""One rank of an ``mpi_call``: ``python -m azmanagers.agent.mpirank FOLDER`` under mpiexec."""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

CALL_FILE = "call.pkl"
"""The function, its arguments and keyword arguments (cloudpickle), written by the caller."""
RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
"""Where MPICH, Open MPI and PMIx put a process's rank."""


def rank_file(folder: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its outcome."""
    return folder / f"rank-{rank}.pkl"


def this_rank() -> int:
    """This process's rank, from the launcher's environment (mpi4py not needed)."""
    for name in RANK_ENV:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _write(folder: Path, rank: int, outcome: tuple[Any, ...]) -> None:
    import cloudpickle  # a value of a class defined in the caller's script goes back too

    try:
        data = cloudpickle.dumps(outcome)
    except Exception as exc:  # a value that cannot go back to the caller
        data = pickle.dumps(
            ("error", type(exc).__name__, f"the result of rank {rank} cannot be pickled: {exc}", "")
        )
    tmp = rank_file(folder, rank).with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(rank_file(folder, rank))


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose str() fails
        return f"<{type(exc).__name__} whose message cannot be read>"


def main(argv: list[str]) -> int:
    """Run the call; rank 0 keeps its value, every rank its exception with its traceback."""
    import cloudpickle

    folder = Path(argv[0])
    rank = this_rank()
    try:
        function, args, kwargs = cloudpickle.loads((folder / CALL_FILE).read_bytes())
        value = function(*args, **kwargs)
    except BaseException as exc:  # the rank's own error goes back with its traceback
        try:
            _write(folder, rank, ("error", type(exc).__name__, _text(exc), traceback.format_exc()))
        finally:
            # Not a normal exit: MPI_Finalize (mpi4py's, at exit) would wait for ranks that
            # wait for this one; an abnormal end makes mpiexec end them all.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    _write(folder, rank, ("ok", value if rank == 0 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
