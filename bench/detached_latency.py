"""Latency of detached jobs: submit-to-running and submit-to-result of trivial jobs.

On a local detached VM (``addproc("local")``), 50 trivial function jobs are submitted one
after another; for each we time submit-to-running (the service has started the job's
process) and submit-to-result (its value is back in this process). The baseline, in the
same run, starts the same Python subprocess directly (``python -m azmanagers.agent.service.run``
on a pickled call, then reads the result file): the detached path adds HTTPS, the token,
the SQLite record and the polling.

Last line: ``figure: detached_submit_to_result_p50_ratio VALUE x`` (goal: at most 2).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = 50


def _trivial(i: int) -> int:
    return i + 1


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(folder: Path) -> list[float]:
    """Seconds from starting the job runner directly to holding its result, per job."""
    import cloudpickle

    times = []
    for i in range(JOBS):
        job_dir = folder / f"job{i}"
        (job_dir / "work").mkdir(parents=True)
        started = time.perf_counter()
        (job_dir / "call.pkl").write_bytes(cloudpickle.dumps((_trivial, (i,), {})))
        subprocess.run(
            [sys.executable, "-m", "azmanagers.agent.service.run", str(job_dir)],
            cwd=job_dir / "work",
            check=True,
        )
        value = cloudpickle.loads((job_dir / "result.pkl").read_bytes())
        times.append(time.perf_counter() - started)
        assert value == i + 1
    return times


def detached() -> tuple[list[float], list[float]]:
    """Per job: seconds from submit to running, and from submit to the result in hand."""
    import azmanagers
    from azmanagers.detached.job import DetachedJob

    vm = azmanagers.addproc("local")
    to_running, to_result = [], []
    try:
        for i in range(JOBS):
            started = time.perf_counter()
            job = azmanagers.detachat(vm, _trivial, i)
            # the service answers the submit once the process is started: that is "running"
            to_running.append(time.perf_counter() - started)
            assert isinstance(job, DetachedJob)
            value = job.result(timeout=60)
            to_result.append(time.perf_counter() - started)
            assert value == i + 1
    finally:
        azmanagers.rmproc(vm)
    return to_running, to_result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="azm-bench-") as tmp:
        os.environ["AZMANAGERS_HOME"] = str(Path(tmp) / "home")
        base = baseline(Path(tmp) / "baseline")
        running, result = detached()
    rows = [
        ("direct subprocess: start to result", base),
        ("detached: submit to running", running),
        ("detached: submit to result", result),
    ]
    print(f"{JOBS} trivial jobs, seconds")
    print(f"{'':40} {'p50':>8} {'p95':>8} {'mean':>8}")
    for label, values in rows:
        print(
            f"{label:40} {_pct(values, 0.5):8.4f} {_pct(values, 0.95):8.4f} "
            f"{statistics.fmean(values):8.4f}"
        )
    ratio = _pct(result, 0.5) / _pct(base, 0.5)
    print(f"figure: detached_submit_to_running_p50 {_pct(running, 0.5) * 1000:.1f} ms")
    p95_ratio = _pct(result, 0.95) / _pct(base, 0.95)
    print(f"figure: detached_submit_to_result_p95_ratio {p95_ratio:.2f} x")
    print(f"figure: detached_submit_to_result_p50_ratio {ratio:.2f} x")


if __name__ == "__main__":
    main()
