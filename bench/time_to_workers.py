"""Time from the call to N workers joined: addprocs("local", N, waitfor=True) vs plain Dask.

The baseline, run in the same process and the same run, starts a ``dask scheduler`` and N
``dask worker`` subprocesses (each with its nanny, as azmanagers' agent runs one) on loopback
(plain TCP, no TLS) and waits until a client sees N workers. azmanagers does more on the way
(a per-cluster CA, TLS, the boot script, the reconciler), and this figure says what that
costs.

Last line: ``figure: time_to_8_workers_ratio VALUE x`` (goal: at most 1.5).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 3
SIZES = (4, 8)
DEADLINE_S = 120.0


def _dask_bin() -> str:
    found = shutil.which("dask") or str(Path(sys.executable).with_name("dask"))
    if not Path(found).exists():
        raise SystemExit("the `dask` command is not installed; pip install 'dask[distributed]'")
    return found


def baseline(n: int) -> float:
    """Seconds from launching a dask scheduler + n workers to a client seeing n workers."""
    from distributed import Client

    dask = _dask_bin()
    procs: list[subprocess.Popen[bytes]] = []
    scratch = tempfile.mkdtemp(prefix="azm-bench-")
    started = time.perf_counter()
    try:
        info_file = Path(scratch) / "scheduler.json"
        sched = subprocess.Popen(
            [
                dask,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(info_file),
            ],
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            cwd=scratch,
        )
        procs.append(sched)
        deadline = time.monotonic() + DEADLINE_S
        address = ""
        while not address:
            try:
                address = json.loads(info_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline or sched.poll() is not None:
                    raise RuntimeError("dask scheduler did not start") from None
                time.sleep(0.01)
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [
                        dask,
                        "worker",
                        address,
                        "--no-nanny",
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=scratch,
                )
            )
        with Client(address, timeout=DEADLINE_S) as client:
            client.wait_for_workers(n, timeout=DEADLINE_S)
            elapsed = time.perf_counter() - started
            with contextlib.suppress(Exception):
                client.shutdown()  # closes scheduler and workers quickly; signals follow
        return elapsed
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def azmanagers_time(n: int) -> float:
    """Seconds from calling addprocs("local", n, waitfor=True) to its return."""
    import azmanagers

    started = time.perf_counter()
    azmanagers.addprocs("local", n, waitfor=True, timeout=DEADLINE_S)
    elapsed = time.perf_counter() - started
    azmanagers.rmprocs()
    return elapsed


def main() -> int:
    home = tempfile.mkdtemp(prefix="azm-bench-home-")
    os.environ["AZMANAGERS_HOME"] = home
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    try:
        baseline(2)  # warm the file cache for both sides
        azmanagers_time(2)
        results: dict[int, tuple[float, float]] = {}
        for n in SIZES:
            base = statistics.median(baseline(n) for _ in range(REPEATS))
            ours = statistics.median(azmanagers_time(n) for _ in range(REPEATS))
            results[n] = (base, ours)
        print(
            f"{'N':>3} {'dask scheduler+workers (s)':>28} {'addprocs waitfor (s)':>22} {'ratio':>7}"
        )
        for n, (base, ours) in results.items():
            print(f"{n:>3} {base:>28.2f} {ours:>22.2f} {ours / base:>7.2f}")
        base8, ours8 = results[8]
        print(f"figure: time_to_8_workers_ratio {ours8 / base8:.2f} x")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
