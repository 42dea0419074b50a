"""``mpi_call``: a function run under ``mpiexec -n RANKS`` on the worker's own VM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azmanagers.errors import ConfigError, MpiCallError

OUTPUT_TAIL_CHARS = 4000
"""How much of mpiexec's output an error shows."""
KILL_GRACE_S = 5.0
CHECK_S = 0.5
"""How often a running call looks whether its task was cancelled."""
MARKER_ENV = "AZM_MPI_CALL"
"""Set on mpiexec and inherited by its proxies and ranks: how they are all found to end."""


class MpiCall:
    """A function that, when called (on a worker), runs under ``mpiexec -n ranks`` there and
    returns rank 0's value. Picklable: give it to ``client.submit``. Made by ``mpi_call``."""

    def __init__(
        self,
        function: Callable[..., Any],
        ranks: int,
        *,
        timeout: float | None = None,
        oversubscribe: bool = False,
        mpiexec: str | None = None,
    ) -> None:
        if not callable(function):
            raise ConfigError(f"mpi_call needs a function, got {function!r}.")
        if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
            raise ConfigError(f"ranks must be a whole number of at least 1, got {ranks!r}.")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}.")
        self.function: Callable[..., Any] | bytes = function
        self.ranks = ranks
        self.timeout = timeout
        self.oversubscribe = oversubscribe
        self.mpiexec = mpiexec
        self.__name__ = getattr(function, "__name__", "mpi_call")  # for Dask's task names

    def __repr__(self) -> str:
        return f"mpi_call({self.__name__}, ranks={self.ranks})"

    def __getstate__(self) -> dict[str, Any]:
        # The function travels as cloudpickle bytes, loaded only by the ranks: a function the
        # node cannot import fails the call with a clear error, not the worker's unpickling.
        import cloudpickle

        state = dict(self.__dict__)
        if not isinstance(self.function, bytes):  # not already as it came from the caller
            state["function"] = cloudpickle.dumps(self.function)
        return state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function on ``ranks`` ranks here; rank 0's value, or MpiCallError with the
        traceback of the first rank that raised."""
        mpiexec = find_mpiexec(self.mpiexec)
        cores = os.cpu_count() or 1
        if self.ranks > cores and not self.oversubscribe:
            raise ConfigError(
                f"mpi_call with {self.ranks} ranks on a node of {cores} cores: pass "
                "oversubscribe=True to run more ranks than cores, or fewer ranks."
            )
        import cloudpickle

        from azmanagers.agent.mpirank import CALL_FILE, rank_file

        function = self.function
        if isinstance(function, bytes):  # as it came from the caller
            try:
                function = cloudpickle.loads(function)
            except Exception as exc:
                raise MpiCallError(
                    f"mpi_call {self.__name__}: the function cannot be loaded on this node "
                    f"({exc}); define it in your script, or install its module on the nodes "
                    "(customenv)."
                ) from None
        with tempfile.TemporaryDirectory(prefix="azm-mpi-") as tmp:
            folder = Path(tmp)
            (folder / CALL_FILE).write_bytes(cloudpickle.dumps((function, args, kwargs)))
            command = [
                mpiexec,
                "-n",
                str(self.ranks),
                sys.executable,
                "-m",
                "azmanagers.agent.mpirank",
                str(folder),
            ]
            code, output = _run(command, self.timeout, str(folder))
            outcomes = {}
            for rank in range(self.ranks):
                path = rank_file(folder, rank)
                if path.exists():
                    try:
                        outcomes[rank] = cloudpickle.loads(path.read_bytes())
                    except Exception as exc:  # a value whose unpickling fails here
                        outcomes[rank] = ("error", type(exc).__name__, str(exc), "")
        errors = [(r, o) for r, o in sorted(outcomes.items()) if o[0] == "error"]
        if errors:
            rank, (_, kind, message, trace) = errors[0]
            raise MpiCallError(
                f"rank {rank} of {self.ranks} raised {kind}: {message}\n{trace}".rstrip()
            )
        if code is None:
            raise MpiCallError(
                f"mpi_call {self.__name__} did not finish within {self.timeout:g} s: every "
                f"rank was killed. mpiexec's output ends:\n{output}"
            )
        if code != 0 or 0 not in outcomes:
            raise MpiCallError(
                f"mpiexec exited with status {code} before rank 0 gave a value; its output "
                f"ends:\n{output}"
            )
        return outcomes[0][1]


def mpi_call(
    function: Callable[..., Any],
    ranks: int = 1,
    *,
    timeout: float | None = None,
    oversubscribe: bool = False,
    mpiexec: str | None = None,
) -> MpiCall:
    """Wrap ``function`` so that a call runs it under ``mpiexec -n ranks`` on the worker that
    runs the call, and returns rank 0's value (AzManagers' per-worker MPI).

    ``client.submit(mpi_call(fn, ranks=8), x)``: each rank calls ``fn(x)`` (it may use
    ``mpi4py``); an error in any rank raises ``MpiCallError`` with that rank's traceback. The
    node needs MPICH (or Open MPI) and, for ``mpi4py``, that package:
    ``pip install mpich mpi4py`` (or ``customenv=["mpich", "mpi4py"]``). ``timeout`` kills
    every rank after that many seconds; more ranks than the node's cores need
    ``oversubscribe=True``.
    """
    return MpiCall(function, ranks, timeout=timeout, oversubscribe=oversubscribe, mpiexec=mpiexec)


def find_mpiexec(given: str | None = None) -> str:
    """``mpiexec`` next to this interpreter (a venv with the ``mpich`` wheel), else on PATH."""
    if given:
        if shutil.which(given) is None:
            raise MpiCallError(f"mpiexec {given!r} is not an executable on this node.")
        return given
    here = Path(sys.executable).parent
    found = shutil.which("mpiexec", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise MpiCallError(
            "no mpiexec on this node: install MPICH into its Python environment (pip install "
            "mpich mpi4py, or addprocs(..., customenv=['mpich', 'mpi4py'])), or Open MPI."
        )
    return found


def _run(command: list[str], timeout: float | None, marker: str) -> tuple[int | None, str]:
    from azmanagers.batch.processes import task_cancelled

    """Run mpiexec; (exit status or None on a timeout, the end of its output). Every process
    it starts carries ``MARKER_ENV=marker`` and is ended with it (ranks and proxies live in
    process groups of their own)."""
    env = {**os.environ, MARKER_ENV: marker}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        active = _watched(proc)
        code: int | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = CHECK_S if deadline is None else min(CHECK_S, deadline - time.monotonic())
                try:
                    code = proc.wait(timeout=max(0.0, left))
                    break
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    if task_cancelled():  # the caller cancelled the call: its ranks end too
                        break
        finally:
            _end_all(proc, marker)
            if active is not None:
                active.unlink(missing_ok=True)
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_TAIL_CHARS))  # only the end is read, however much
        text = out.read().decode(errors="replace")
    return code, text


def _watched(proc: subprocess.Popen[bytes]) -> Path | None:
    """On a worker: have the node's watchdog kill mpiexec's group if the worker dies (even by
    kill -9); Hydra's proxies then end their ranks. Returns the file that asks it."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return None  # not in a Dask task: nothing outlives the caller's own process
    from azmanagers.batch.processes import ACTIVE, ensure_watchdog
    from azmanagers.config.paths import active_runs_dir

    with ACTIVE.lock:
        ensure_watchdog()
    active = active_runs_dir() / f"{os.getpid()}-mpi-call-{proc.pid}"
    active.write_text(str(proc.pid))
    return active


def _marked(marker: str) -> list[Any]:
    import psutil

    found = []
    for candidate in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if candidate.environ().get(MARKER_ENV) == marker:
                found.append(candidate)
    return found


def _end_all(proc: subprocess.Popen[bytes], marker: str) -> None:
    """No rank, proxy or daemon outlives the call: SIGTERM, then SIGKILL after a grace."""
    import psutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    left = _marked(marker)
    for candidate in left:
        with contextlib.suppress(psutil.Error):
            candidate.terminate()
    _, alive = psutil.wait_procs(left, timeout=KILL_GRACE_S)
    for candidate in alive:
        with contextlib.suppress(psutil.Error):
            candidate.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE_S)
