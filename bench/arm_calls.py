"""ARM calls to provision N instances, reconcile them for 10 cycles, and tear them down.

Runs the real path (addprocs -> AzCluster -> azure provider -> official SDK) against the
emulator in counting mode (its VMs start no process), for N = 1, 10, 100, 1000, and counts
the requests the emulator answered. The baseline in the same run is what a peer pays: the
calls dask-cloudprovider's AzureVMCluster makes from create to close (a scheduler VM and one VM
per worker, their VMs run through the emulator: its create waits for its scheduler) for 1, 2
and 4 workers, in the venv ``.ci/install-dask-cloudprovider`` makes (PyPI the first time); its
cost per added worker times N is the baseline. Both per-worker costs are printed.

Then one real worker on a steady cluster (nothing changes: the reconciler lists the pool at the
provider's steady pace, joins come from the scheduler): its ARM reads over a minute, scaled to
an hour (goal: at most 400; listing twice a second made about 7,600). Last, the hour's reads
are spent: ARM answers 429 with a Retry-After of about an hour, and no call may follow.

Last lines: ``figure: dask_cloudprovider_calls_per_worker VALUE calls``,
``figure: arm_calls_at_10 VALUE calls``, ``figure: arm_calls_at_1000 VALUE calls``
(goal: the same count for every N, at most 60 in all) and
``figure: arm_reads_per_idle_hour VALUE calls``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = (1, 10, 100, 1000)
CYCLES = 10
PEER_WORKERS = (1, 2, 4)
"""Workers of the dask-cloudprovider clusters counted (each worker is a VM there)."""
SUB = "00000000-0000-0000-0000-00000000bead"
RG = "azm-bench"
DEADLINE_S = 120.0
IDLE_WINDOW_S = 60.0
"""How long the steady cluster's reads are counted (then scaled to an hour)."""
THROTTLED_WINDOW_S = 20.0
"""How long no call may follow a 429 with a long Retry-After."""
HOUR_S = 3600.0


def count_calls(n: int) -> int:
    """Provision n instances, wait for 10 reconcile cycles, tear down; return ARM calls."""
    import azmanagers
    from azmanagers.emulator import sample_scaleset_template, start_emulator
    from azmanagers.providers.azure._clients import ArmSettings, resource_client

    emu = start_emulator(run_instances=False)
    # room for 1000 VMs: the quota pre-flight would (rightly) refuse them otherwise
    emu.state.faults.update({"family_cores_limit": 100_000, "regional_cores_limit": 100_000})
    try:
        os.environ.update(emu.environment())
        resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
            RG, {"location": "southcentralus"}
        )
        template = f"bench{n}"
        azmanagers.save_template_scaleset(
            template,
            sample_scaleset_template(template, SUB, RG),
        )
        start = len(emu.server.calls)  # the resource group above is setup, not counted
        cluster = azmanagers.addprocs(template, n, max_instances=max(SIZES))
        deadline = time.monotonic() + DEADLINE_S
        while cluster.reconcile_cycles < CYCLES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {cluster.reconcile_cycles} cycles in {DEADLINE_S} s")
            time.sleep(0.05)
        provisioned = len(emu.state.scalesets[(SUB, RG.lower(), cluster.pool.lower())].vms)
        if provisioned != n:
            raise RuntimeError(f"{provisioned} instances provisioned, wanted {n}")
        azmanagers.rmprocs()
        if emu.state.scalesets:
            raise RuntimeError("teardown left a scale set behind")
        return len(emu.server.calls) - start
    finally:
        emu.stop()


def count_peer_calls(n: int, python: str) -> int:
    """ARM calls dask-cloudprovider's AzureVMCluster makes for n workers, create to close."""
    from tests.emulator.azure_vm_cluster import prepare_network, run_cluster

    from azmanagers.emulator import start_emulator

    folder = tempfile.mkdtemp(prefix="azm-bench-dcp-")
    emu = start_emulator(run_instances=True, folder=Path(folder))
    try:
        prepare_network(emu)  # what it expects to exist: setup, not counted
        start = len(emu.server.calls)
        result = run_cluster(emu, python, n)
        if result["workers"] != n:
            raise RuntimeError(f"dask-cloudprovider's cluster had {result['workers']} workers")
        # ARM's calls only: its sign-in (discovery, token) goes to Entra ID, not ARM
        arm = [c for c in emu.server.calls[start:] if c.path.lower().startswith("/subscriptions")]
        failed = [c for c in arm if c.status >= 400]
        if failed:
            raise RuntimeError(f"dask-cloudprovider's calls failed: {failed[:3]}")
        return len(arm)
    finally:
        emu.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _reads(emu: object) -> int:
    return len(emu.server.calls_matching("GET"))  # type: ignore[attr-defined]


def idle_reads_and_throttle() -> tuple[float, float, int]:
    """Return (reads per idle hour, the 429's Retry-After, calls made during it)."""
    import azmanagers
    from azmanagers.emulator import sample_scaleset_template, start_emulator
    from azmanagers.providers.azure._clients import ArmSettings, resource_client

    folder = tempfile.mkdtemp(prefix="azm-bench-emu-")
    emu = start_emulator(run_instances=True, folder=Path(folder))
    try:
        os.environ.update(emu.environment())
        resource_client(ArmSettings.from_environment(), SUB).resource_groups.create_or_update(
            RG, {"location": "southcentralus"}
        )
        azmanagers.save_template_scaleset("idle", sample_scaleset_template("idle", SUB, RG))
        cluster = azmanagers.addprocs("idle", 1, waitfor=True, timeout=DEADLINE_S)
        pace = cluster.reconciler.pace
        deadline = time.monotonic() + pace.change_window_s + DEADLINE_S
        while cluster.reconciler.interval_s() < pace.steady_s:  # the join was a change
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster never became steady")
            time.sleep(0.5)
        start = _reads(emu)
        time.sleep(IDLE_WINDOW_S)
        per_hour = (_reads(emu) - start) * HOUR_S / IDLE_WINDOW_S
        if cluster.nworkers() != 1:
            raise RuntimeError("the idle cluster lost its worker")

        emu.state.faults.update({"reads_per_hour": 0})  # the hour's reads are spent
        cluster.reconciler.changed(wake=True)  # a change: list now, at the fast pace after
        deadline = time.monotonic() + DEADLINE_S
        while not (throttled := [c for c in emu.server.calls if c.status == 429]):
            if time.monotonic() > deadline:
                raise RuntimeError("no read reached ARM after the reads were spent")
            time.sleep(0.1)
        retry_after_s = cluster.reconciler.gate.throttled_for_s()
        spent = len(emu.server.calls)
        time.sleep(THROTTLED_WINDOW_S)
        during = len(emu.server.calls) - spent
        del throttled
        emu.state.faults.update({"reads_per_hour": 12_000})  # let the teardown poll
        azmanagers.rmprocs()
        return per_hour, retry_after_s, during
    finally:
        emu.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    home = tempfile.mkdtemp(prefix="azm-bench-home-")
    os.environ["AZMANAGERS_HOME"] = home
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    try:
        from tests.emulator.azure_vm_cluster import venv_python

        python = venv_python()
        peer_counts = {n: count_peer_calls(n, python) for n in PEER_WORKERS}
        counts = {n: count_calls(n) for n in SIZES}
        per_hour, retry_after_s, during = idle_reads_and_throttle()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    few, many = PEER_WORKERS[0], PEER_WORKERS[-1]
    peer_per_worker = (peer_counts[many] - peer_counts[few]) / (many - few)
    print("dask-cloudprovider AzureVMCluster, create to close (a scheduler VM + a VM per worker):")
    print(f"{'workers':>8} {'ARM calls':>10} {'per worker':>11}")
    for n, calls in peer_counts.items():
        print(f"{n:>8} {calls:>10} {calls / n:>11.1f}")
    label = f"per-worker peers ({peer_per_worker:g} x N)"
    print(f"{'N':>5} {'ARM calls':>10} {label:>30} {'ratio':>8}")
    for n, calls in counts.items():
        peer = peer_per_worker * n
        print(f"{n:>5} {calls:>10} {peer:>30.0f} {calls / peer:>8.3f}")
    ours_per_worker = (counts[SIZES[-1]] - counts[SIZES[0]]) / (SIZES[-1] - SIZES[0])
    print(
        f"per added worker: ours {ours_per_worker:.3f} ARM calls ({counts[SIZES[-1]]} for "
        f"{SIZES[-1]} workers, {counts[SIZES[-1]] / SIZES[-1]:.3f} each), dask-cloudprovider "
        f"{peer_per_worker:g} ({peer_counts[many]} for {many} workers)"
    )
    print(
        f"steady cluster: {per_hour:.0f} ARM reads an hour (measured over {IDLE_WINDOW_S:g} s; "
        "listing twice a second would make about 7,200)"
    )
    print(
        f"reads spent: ARM answered 429, Retry-After {retry_after_s:.0f} s; ARM calls in the "
        f"next {THROTTLED_WINDOW_S:g} s: {during}"
    )
    if during:
        raise SystemExit("the cluster kept calling ARM during a Retry-After")
    print(f"figure: dask_cloudprovider_calls_per_worker {peer_per_worker:g} calls")
    print(f"figure: arm_calls_at_10 {counts[10]} calls")
    print(f"figure: arm_calls_at_1000 {counts[1000]} calls")
    print(f"figure: arm_reads_per_idle_hour {per_hour:.0f} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
