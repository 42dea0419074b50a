"""Multi-node runs: MPI launch overhead across process-VMs, and master-to-workers start time.

1. An mpi4py hello (an allreduce) on 3 nodes x 2 ranks as a batch job through azmanagers, on a
   running local cluster of 3 process-VMs (each on a loopback address of its own; remote
   launches go through the nodes' agents over TLS), against ``mpiexec -n 6`` of the same script
   run directly on this machine, in the same run, alternating, REPEATS times each. The job's
   time is from ``batch.submit`` to ``job.wait`` returning (staging, records, the gang's
   reservation, coordination and launch, log uploads included).
2. A master/worker job with 4 workers: from the moment the master's command started to the
   moment the last worker's command started (both as the nodes saw them). dmsbatch polls the
   master's stdout every 10 s for its hostname.

Last lines: ``figure: master_to_workers_started_s VALUE s`` and
``figure: mpi_launch_overhead_s VALUE s`` (ours minus direct, median; goal at most 1.0 s each).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = int(os.environ.get("AZM_BENCH_REPEATS", "5"))
HELLO = """
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1, op=MPI.SUM)
if comm.Get_rank() == 0:
    open("hello.txt", "w").write(f"{comm.Get_size()} ranks, sum {total}\\n")
"""
MASTER = """
import os, socket, sys
server = socket.create_server((os.environ["AZM_HOST"], int(sys.argv[1])))
server.settimeout(60)
seen = 0
while seen < 4:
    conn, _ = server.accept()
    seen += bool(conn.recv(10))
    conn.close()
"""
WORKER = """
import os, socket, time
address = (os.environ["AZM_MASTER_HOST"], int(os.environ["AZM_MASTER_PORT"]))
for _ in range(300):  # the master may still be starting to listen
    try:
        with socket.create_connection(address) as conn:
            conn.sendall(b"hi")
        break
    except OSError:
        time.sleep(0.1)
time.sleep(60)
"""


def direct(folder: Path) -> float:
    """Seconds for ``mpiexec -n 6 python hello.py`` on this machine."""
    started = time.perf_counter()
    subprocess.run(
        ["mpiexec", "-n", "6", sys.executable, "hello.py"],
        cwd=folder,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    from azmanagers import addprocs, batch, rmprocs

    with tempfile.TemporaryDirectory(prefix="azm-bench-mpi-") as tmp:
        root = Path(tmp)
        os.environ["AZMANAGERS_HOME"] = str(root / "home")
        code = root / "code"
        code.mkdir()
        (code / "hello.py").write_text(HELLO)
        (code / "master.py").write_text(MASTER)
        (code / "worker.py").write_text(WORKER)
        storage = (root / "runs").as_uri()
        cluster = addprocs("local", 5, waitfor=True, timeout=300)
        try:
            model = batch.MpiModel(
                "hello",
                command=f"mpiexec -n 6 {sys.executable} hello.py",
                inputs=[f"{code}/"],
                nodes=3,
                ranks_per_node=2,
                outputs=["hello.txt"],
            )
            ours, theirs = [], []
            for i in range(REPEATS + 1):  # the first of each warms caches; not counted
                started = time.perf_counter()
                job = batch.submit(model, name=f"hello-{i}", storage=storage, cluster=cluster)
                status = job.wait(timeout=300)
                took = time.perf_counter() - started
                if status.status != "succeeded":
                    raise SystemExit(f"the MPI job failed: {job.runs()}")
                spent = direct(code)
                if i:
                    ours.append(took)
                    theirs.append(spent)
                print(f"run {i}: through azmanagers {took:.3f} s, mpiexec direct {spent:.3f} s")
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            gang = batch.MasterWorker(
                master=batch.Model(
                    "m", command=f"{sys.executable} master.py {port}", inputs=[f"{code}/"]
                ),
                worker=batch.Model(
                    "w", command=f"{sys.executable} worker.py $AZM_MASTER_HOST", inputs=[f"{code}/"]
                ),
                workers=4,
                port=port,
                port_wait=None,
            )
            job = batch.submit(gang, name="pest", storage=storage, cluster=cluster)
            driver = job._local.driver if job._local else None
            status = job.wait(timeout=300)
            if status.status != "succeeded" or driver is None:
                raise SystemExit(f"the master/worker job failed: {job.runs()}")
            ((master_at, last_worker_at),) = driver.timings.values()  # type: ignore[attr-defined]
        finally:
            rmprocs()
    overhead = statistics.median(ours) - statistics.median(theirs)
    print(
        f"MPI 3 nodes x 2 ranks: median {statistics.median(ours):.3f} s through azmanagers, "
        f"{statistics.median(theirs):.3f} s mpiexec -n 6 direct"
    )
    print(f"figure: master_to_workers_started_s {last_worker_at - master_at:.3f} s")
    print(f"figure: mpi_launch_overhead_s {overhead:.3f} s")


if __name__ == "__main__":
    main()
