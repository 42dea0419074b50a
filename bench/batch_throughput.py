"""Batch throughput: runs per second of a tiny model, ours against ``xargs -P 2``.

1,000 runs of a tiny model (read its 1 KiB input, write a 1 KiB output) on 2 local
single-thread workers with ``file://`` storage, from ``batch.submit`` to the job's end (inputs
staged, outputs and logs stored, a record per run). The baseline, in the same run: ``xargs -P 2``
running a shell script that does the same mkdir, copy-in, run and copy-out per run. The
workers are up before either clock starts.

Last line: ``figure: batch_runs_per_s_ratio VALUE x`` (ours / xargs; goal at least 0.8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = int(os.environ.get("AZM_BENCH_RUNS", "1000"))
MODEL = 'head -c 1024 "in/$I.txt" | tr a-z A-Z > out.txt'

STEP = """#!/usr/bin/env bash
set -eu
I=$1
d="$WORK/$I"
mkdir -p "$d/in"
cp "$INPUTS/$I.txt" "$d/in/$I.txt"
cd "$d"
I=$I bash -c '{model}' > stdout.txt 2> stderr.txt
mkdir -p "$OUT/$I"
cp out.txt stdout.txt stderr.txt "$OUT/$I/"
rm -rf "$d"
"""


def make_inputs(folder: Path) -> Path:
    inputs = folder / "in"
    inputs.mkdir(parents=True)
    for i in range(RUNS):
        (inputs / f"{i}.txt").write_bytes(os.urandom(512).hex().encode())
    return inputs


def baseline(folder: Path, inputs: Path) -> float:
    """Seconds for xargs -P 2 to do every run."""
    folder.mkdir(parents=True)
    script = folder / "step.sh"
    script.write_text(STEP.replace("{model}", MODEL))
    script.chmod(0o755)
    env = {
        **os.environ,
        "WORK": str(folder / "work"),
        "INPUTS": str(inputs),
        "OUT": str(folder / "out"),
    }
    started = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", "2", "-n", "1", str(script)],
        input="\n".join(str(i) for i in range(RUNS)).encode(),
        env=env,
        check=True,
    )
    elapsed = time.perf_counter() - started
    assert len(list((folder / "out").iterdir())) == RUNS
    return elapsed


def ours(folder: Path, inputs: Path) -> float:
    """Seconds for batch.submit to stage, run and record every run."""
    import azmanagers
    from azmanagers import batch

    cluster = azmanagers.addprocs("local", 2, waitfor=True, timeout=120, nthreads=1)
    try:
        # the input path is per run: {I} picks the run's file, placed as <I>.txt
        model = batch.Model(
            "tiny",
            command=MODEL.replace('"in/$I.txt"', '"$I.txt"'),
            inputs=[f"{inputs}/{{I}}.txt"],
            outputs=[batch.Output("out.txt")],
        )
        sweep = model.sweep(batch.product(I=range(RUNS)))
        started = time.perf_counter()
        job = batch.submit(
            sweep,
            name="tiny",
            storage=(folder / "runs").as_uri(),
            cluster=cluster,
            workers=2,
            wait=True,
            timeout=3600,
        )
        elapsed = time.perf_counter() - started
        status = job.status()
        assert status.counts.get("succeeded") == RUNS, status
        return elapsed
    finally:
        azmanagers.rmprocs(template="local")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="azm-bench-") as tmp:
        os.environ["AZMANAGERS_HOME"] = str(Path(tmp, "home"))
        inputs = make_inputs(Path(tmp))
        base_s = baseline(Path(tmp, "xargs"), inputs)
        our_s = ours(Path(tmp, "ours"), inputs)
    base_rate, our_rate = RUNS / base_s, RUNS / our_s
    print(f"xargs -P 2: {RUNS} runs in {base_s:.2f} s ({base_rate:.0f} runs/s)")
    print(f"azmanagers: {RUNS} runs in {our_s:.2f} s ({our_rate:.0f} runs/s)")
    print(f"figure: batch_runs_per_s_ratio {our_rate / base_rate:.2f} x")


if __name__ == "__main__":
    sys.exit(main())
