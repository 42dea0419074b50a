"""Named clusters: time to 4 joined nodes against addprocs, and the ARM calls of nodes and list.

1. Local: ``azm cluster start NAME --nodes 4 --wait`` (a process of its own: the CLI as a user
   runs it) against ``addprocs("local", 4, waitfor=True)`` in a process of its own too (the
   clock stops when it returns), in the same run, alternating, REPEATS times each; the median
   of each. The named cluster boots one more process-VM (the head) before its workers.
2. Through the emulator (its stand-alone VMs run, so the head is real; its scale-set
   instances are made but run nothing, so 100 nodes fit on this machine): a named cluster of
   10 and of 100 nodes, and the ARM calls that ``nodes`` (``NamedCluster.status``), ``list``
   (the records) and ``list --refresh`` make: the head answers them, so whatever N is, none
   reach ARM but one tag listing for ``list --refresh`` (to see the pool is there). Then with
   the head deleted by hand: ``list --refresh`` asks the cloud (a fixed count). Also the head's own
   reads over REFRESH_WINDOW_S, as calls per hour.

Last line: ``figure: named_start_4_ratio VALUE x`` (named / addprocs; goal at most 1.5).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = int(os.environ.get("AZM_BENCH_REPEATS", "3"))
NODES = 4
SUB = "00000000-0000-0000-0000-00000000beef"
RG = "azm-bench-named"
SIZES = (10, 100)
REFRESH_WINDOW_S = 30.0
HOUR_S = 3600.0
ADDPROCS = (
    "import sys, time, azmanagers\n"
    "t = time.perf_counter()\n"
    "azmanagers.addprocs('local', {n}, waitfor=True, timeout=300)\n"
    "print(f'READY {{time.perf_counter() - t:.3f}}', flush=True)\n"
    "azmanagers.rmprocs()\n"
)


def _env(home: str) -> dict[str, str]:
    return {**os.environ, "AZMANAGERS_HOME": home}


def time_named(home: str, name: str) -> float:
    """Seconds for ``azm cluster start NAME --nodes 4 --wait``; the cluster is then stopped."""
    azm = [sys.executable, "-c", "import sys; from azmanagers.cli import main; sys.exit(main())"]
    started = time.perf_counter()
    subprocess.run(
        [*azm, "cluster", "start", name, "--nodes", str(NODES), "--wait", "--timeout", "300"],
        env=_env(home),
        check=True,
        capture_output=True,
        timeout=400,
    )
    seconds = time.perf_counter() - started
    subprocess.run(
        [*azm, "cluster", "stop", name, "--yes"],
        env=_env(home),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return seconds


def time_addprocs(home: str) -> float:
    """Seconds from a new interpreter to ``addprocs('local', 4, waitfor=True)`` returning."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", ADDPROCS.format(n=NODES)],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    seconds = None
    for line in proc.stdout:
        if line.startswith("READY"):
            seconds = time.perf_counter() - started
    if proc.wait(timeout=300) != 0 or seconds is None:
        raise RuntimeError("addprocs did not finish")
    return seconds


def arm_calls(size: int, home: str) -> dict[str, float]:
    """The ARM calls of nodes, list and list --refresh on a named cluster of ``size`` nodes."""
    import azmanagers
    from azmanagers.emulator import sample_scaleset_template, start_emulator
    from azmanagers.named.handle import named_clusters
    from azmanagers.named.refresh import refresh_all
    from azmanagers.named.stop import providers_of, stop_cluster
    from azmanagers.providers.azure._clients import ArmSettings, resource_client

    folder = tempfile.mkdtemp(prefix="azm-bench-emu-")
    emu = start_emulator(run_instances=True, folder=Path(folder))
    emu.state.faults.update(
        {"idle_scaleset_instances": 1, "family_cores_limit": 10_000, "regional_cores_limit": 10_000}
    )
    os.environ.update(emu.environment())
    os.environ["AZMANAGERS_HOME"] = home
    name = f"bench-{size}"
    try:
        resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
            RG, {"location": "southcentralus"}
        )
        azmanagers.save_template_scaleset("benchss", sample_scaleset_template("benchss", SUB, RG))
        vm = azmanagers.build_vmtemplate(
            "benchhead",
            subscriptionid=SUB,
            admin_username="azuser",
            location="southcentralus",
            resourcegroup=RG,
            imagegallery="gallery",
            imagename="image",
            vmsize="Standard_D4s_v3",
            managed_identity=True,
        )
        azmanagers.save_template_vm("benchhead", vm)
        nic = azmanagers.build_nictemplate(
            "benchnic",
            subscriptionid=SUB,
            resourcegroup_vnet=RG,
            vnet="vnet",
            subnet="subnet",
            location="southcentralus",
        )
        azmanagers.save_template_nic("benchnic", nic)
        cluster = azmanagers.start_cluster(
            name,
            template="benchss",
            head_template="benchhead",
            nodes=size,
            max_instances=size,
            timeout=120,
        )
        deadline = time.monotonic() + 120
        while len(cluster.status().nodes) < size:  # the head listed its pool
            if time.monotonic() > deadline:
                raise RuntimeError(f"the head never saw {size} nodes")
            time.sleep(1.0)
        out: dict[str, float] = {}
        for what, call in (
            ("nodes", lambda: cluster.status()),
            ("list", named_clusters),
            ("list_refresh", refresh_all),
        ):
            before = len(emu.server.calls)
            call()
            out[what] = len(emu.server.calls) - before
        before = len(emu.server.calls)
        time.sleep(REFRESH_WINDOW_S)
        out["head_calls_per_hour"] = (len(emu.server.calls) - before) * HOUR_S / REFRESH_WINDOW_S
        # the head deleted by hand (az vm delete): list --refresh asks the cloud
        providers_of(cluster.record)[1].delete_vm(cluster.record.head)
        before = len(emu.server.calls)
        refreshed = refresh_all()
        out["list_refresh_head_gone"] = len(emu.server.calls) - before
        if refreshed[0].record.status != "stopped":
            raise RuntimeError(f"refresh did not see the head gone: {refreshed[0]}")
        stop_cluster(name)
        if emu.state.scalesets or emu.state.vms or emu.state.nics:
            raise RuntimeError("stop left something behind")
        return out
    finally:
        emu.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    home = tempfile.mkdtemp(prefix="azm-bench-home-")
    try:
        named, plain = [], []
        for i in range(REPEATS):
            plain.append(time_addprocs(home))
            named.append(time_named(home, f"bench-start-{i}"))
            print(f"run {i}: addprocs {plain[-1]:.2f} s, named start {named[-1]:.2f} s")
        for size in SIZES:
            calls = arm_calls(size, tempfile.mkdtemp(prefix="azm-bench-home-"))
            print(f"{size} nodes: ARM calls " + ", ".join(f"{k} {v:g}" for k, v in calls.items()))
        ratio = statistics.median(named) / statistics.median(plain)
        print(
            f"median: addprocs {statistics.median(plain):.2f} s, "
            f"named start {statistics.median(named):.2f} s"
        )
        print(f"figure: named_start_4_ratio {ratio:.2f} x")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
