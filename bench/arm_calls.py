"""ARM calls to provision N instances, reconcile them for 10 cycles, and tear them down.

Runs the real path (addprocs -> AzCluster -> azure provider -> official SDK) against the
emulator in counting mode (its VMs start no process), for N = 1, 10, 100, 1000, and counts
the requests the emulator answered. The baseline in the same run is the per-instance cost
the peers pay (notes: one VM per worker costs dask-cloudprovider 5 to 7 calls per worker):
5 calls x N.

Last lines: ``figure: arm_calls_at_10 VALUE calls`` and ``figure: arm_calls_at_1000 VALUE calls``
(goal: the same count for every N, at most 60 in all).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

SIZES = (1, 10, 100, 1000)
CYCLES = 10
PER_WORKER_PEER_CALLS = 5
SUB = "00000000-0000-0000-0000-00000000bead"
RG = "azm-bench"
DEADLINE_S = 120.0


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


def main() -> int:
    home = tempfile.mkdtemp(prefix="azm-bench-home-")
    os.environ["AZMANAGERS_HOME"] = home
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    try:
        counts = {n: count_calls(n) for n in SIZES}
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"{'N':>5} {'ARM calls':>10} {'per-worker peers (5 x N)':>25} {'ratio':>8}")
    for n, calls in counts.items():
        peer = PER_WORKER_PEER_CALLS * n
        print(f"{n:>5} {calls:>10} {peer:>25} {calls / peer:>8.3f}")
    print(f"figure: arm_calls_at_10 {counts[10]} calls")
    print(f"figure: arm_calls_at_1000 {counts[1000]} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
