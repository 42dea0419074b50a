"""``azm demo``: a local cluster computing for real, a batch sweep, a detached job, a clean exit."""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections import Counter

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

DEMO_WORKERS = 4
DEMO_TASKS = 16
SAMPLES_PER_TASK = 200_000
WAIT_TIMEOUT_S = 120.0
DEMO_BATCH_RUNS = 6


def monte_carlo_pi(seed: int, samples: int) -> tuple[int, str]:
    """Count random points inside the unit quarter circle; return (hits, worker name)."""
    import distributed

    rng = random.Random(seed)
    hits = 0
    for _ in range(samples):
        x, y = rng.random(), rng.random()
        hits += x * x + y * y <= 1.0
    worker = distributed.get_worker()
    if seed == 0:
        logging.getLogger("azmanagers.demo").info("hello from %s: task 0 done", worker.name)
    return hits, str(worker.name)


def _detached_sum(n: int) -> int:
    print(f"summing {n} squares", flush=True)
    return sum(i * i for i in range(n))


def run_detached_part(out: Console) -> bool:
    """Run one detached job on a local detached VM; return True when all went as expected."""
    import azmanagers

    started = time.monotonic()
    vm = azmanagers.addproc("local")
    try:
        out.print(
            f"detached VM {vm.name} up in {time.monotonic() - started:.1f} s "
            f"(HTTPS with a pinned certificate and a bearer token)"
        )
        job = azmanagers.detachat(vm, _detached_sum, 1000)
        value = job.result(timeout=WAIT_TIMEOUT_S)
        out.print(f"detached job {job.id}: result {value}, stdout {escape(job.read().strip())!r}")
        return bool(value == sum(i * i for i in range(1000)))
    finally:
        azmanagers.rmproc(vm)
        out.print(f"detached VM {vm.name} deleted")


def run_batch_part(out: Console) -> bool:
    """Run a sweep of a tiny shell model on the running cluster; True when the outputs add up.

    Storage is a folder under ``AZMANAGERS_HOME`` (``demo/batch``), emptied first so every demo
    runs the sweep afresh. Each run squares ``N`` and counts the lines of a shared input.
    """
    from azmanagers import batch
    from azmanagers.config.paths import home

    root = home() / "demo" / "batch"
    shutil.rmtree(root, ignore_errors=True)
    (root / "inputs").mkdir(mode=0o700, parents=True)
    table = root / "inputs" / "table.txt"
    table.write_text("".join(f"row {i}\n" for i in range(10)))
    model = batch.Model(
        "squares",
        command='echo "$((N * N)) $(wc -l < table.txt)" > out.txt',
        shared=[str(table)],
        outputs=["out.txt"],
    )
    started = time.monotonic()
    job = batch.submit(
        model.sweep(batch.product(N=range(1, DEMO_BATCH_RUNS + 1))),
        name="demo-sweep",
        storage=(root / "runs").as_uri(),
        wait=True,
        timeout=WAIT_TIMEOUT_S,
    )
    status = job.status()
    values = [
        job.storage.get_bytes(r.outputs[0].key).decode().split() for r in job.runs() if r.outputs
    ]
    total = sum(int(square) for square, _ in values)
    lines_seen = {int(lines) for _, lines in values}
    out.print(
        f"batch sweep: {status.total} runs {status.status} in "
        f"{time.monotonic() - started:.1f} s, sum of N*N for N=1..{DEMO_BATCH_RUNS} = "
        f"[bold green]{total}[/bold green] (outputs in {escape(job.url)})"
    )
    expected = sum(n * n for n in range(1, DEMO_BATCH_RUNS + 1))
    return status.status == "succeeded" and total == expected and lines_seen == {10}


def run_demo(console: Console | None = None) -> int:
    """Run the demo; return 0 on success."""
    import distributed

    import azmanagers
    from azmanagers.cluster.core import AzCluster

    out = console or Console()
    seen: list[str] = []

    class _Show(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            out.print(f"[cyan]worker log ->[/cyan] {escape(record.getMessage())}")

    handler = _Show(logging.INFO)
    wlog = logging.getLogger("azmanagers.worker")
    wlog.addHandler(handler)
    wlog.setLevel(logging.INFO)
    wlog.propagate = False
    started = time.monotonic()
    cluster: AzCluster | None = None
    try:
        out.print(f"[bold]azmanagers demo[/bold]: {DEMO_WORKERS} workers from template 'local'")
        with Progress(
            TextColumn("waiting for workers"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} joined"),
            TimeElapsedColumn(),
            console=out,
            transient=True,
        ) as bar:
            task = bar.add_task("join", total=DEMO_WORKERS)
            cluster = azmanagers.addprocs(
                "local",
                DEMO_WORKERS,
                waitfor=True,
                timeout=WAIT_TIMEOUT_S,
                progress=lambda joined, _wanted: bar.update(task, completed=joined),
            )
        out.print(
            f"{cluster.nworkers()} workers joined in {time.monotonic() - started:.1f} s "
            f"(scheduler {cluster.scheduler_address}, TLS with the cluster's own CA)"
        )
        client = distributed.default_client()
        futures = client.map(
            monte_carlo_pi, range(DEMO_TASKS), [SAMPLES_PER_TASK] * DEMO_TASKS, pure=False
        )
        results = client.gather(futures)
        hits = sum(h for h, _ in results)
        estimate = 4.0 * hits / (DEMO_TASKS * SAMPLES_PER_TASK)
        out.print(
            f"pi ~ [bold green]{estimate:.5f}[/bold green] from "
            f"{DEMO_TASKS * SAMPLES_PER_TASK:,} samples in {DEMO_TASKS} tasks"
        )
        per_worker = Counter(w for _, w in results)
        joined = cluster.join_times
        table = Table(title="workers")
        table.add_column("worker")
        table.add_column("joined after (s)", justify="right")
        table.add_column("tasks run", justify="right")
        for name in sorted(set(joined) | set(per_worker)):
            at = joined.get(name)
            table.add_row(name, "-" if at is None else f"{at:.2f}", str(per_worker.get(name, 0)))
        out.print(table)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)
        if not seen:
            out.print("[yellow]no worker log line arrived within 10 s[/yellow]")
        batch_ok = run_batch_part(out)
        azmanagers.rmprocs(2)
        out.print(
            f"rmprocs(2): {cluster.nworkers()} workers left ({', '.join(azmanagers.workers())})"
        )
        pool = cluster.pool
        azmanagers.rmprocs()
        leftover = cluster.provider.list_instances(pool)
        out.print(f"cluster closed; {len(leftover)} instances left")
        detached_ok = run_detached_part(out)
        out.print(f"done in {time.monotonic() - started:.1f} s")
        return 0 if not leftover and seen and detached_ok and batch_ok else 1
    finally:
        wlog.removeHandler(handler)
        wlog.propagate = True
        if cluster is not None:
            cluster.close()


def demo_command() -> None:
    """Start 4 local workers, estimate pi, run a batch sweep, remove them (no account)."""
    code = run_demo()
    if code:
        raise typer.Exit(code)
