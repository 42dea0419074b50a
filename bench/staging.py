"""Staging speed on Azurite: our az:// storage seam against azure-storage-blob used with care.

Four cases, up and down through Azurite (the Blob emulator, started here on a free loopback
port): one 256 MiB file, and 1,000 files of 4 KiB. Ours is ``open_storage("az://...")`` with
``put_file``/``get_file`` and ``put_files``/``get_files`` at their defaults (SHA-256 computed on
upload, recorded in the metadata and verified on download; the "same hash already there" check
runs too, against fresh containers so that every upload really happens). The baseline, in the
same run, is the SDK as a careful user would call it: ``upload_blob(data, max_concurrency=8)``
and ``download_blob(max_concurrency=8).readinto(f)`` for the big file, a ThreadPoolExecutor(16)
of single ``upload_blob``/``download_blob`` calls on one shared ContainerClient for the small
ones. Each case runs REPEATS times, the order of the two alternating; medians are reported.
dmsbatch's setting (``max_concurrency=2``, files in series) is timed once, for information.

Then 50 runs of a model sharing one 32 MiB input on 4 local single-thread workers
(``file://`` storage): how many times each node fetched the shared file (goal 1.0).

Last lines: ``figure: shared_input_fetches_per_node VALUE`` and
``figure: staging_ratio VALUE x`` (geometric mean over the four cases of careful-SDK seconds /
our seconds; goal at least 1.0).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.azurite import running_azurite  # noqa: E402  (the repository root is on sys.path)

MIB = 1 << 20
BIG_BYTES = int(os.environ.get("AZM_BENCH_BIG_MIB", "256")) * MIB
SMALL_FILES = int(os.environ.get("AZM_BENCH_SMALL_FILES", "1000"))
SMALL_BYTES = 4 << 10
REPEATS = int(os.environ.get("AZM_BENCH_REPEATS", "3"))
SDK_CONCURRENCY = 8
SDK_THREADS = 16
DMS_CONCURRENCY = 2
DMS_SUBSET = 100
"""dmsbatch's small files move in series: timed on this many, scaled to SMALL_FILES."""

SHARED_RUNS = 50
SHARED_WORKERS = 4
SHARED_BYTES = 32 * MIB
CASES = ("big up", "big down", "small up", "small down")


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def make_files(folder: Path) -> tuple[Path, list[Path]]:
    """The 256 MiB file and the 4 KiB files (random bytes)."""
    folder.mkdir(parents=True)
    big = folder / "big.bin"
    with open(big, "wb") as out:
        for _ in range(BIG_BYTES // MIB):
            out.write(os.urandom(MIB))
    small_dir = folder / "small"
    small_dir.mkdir()
    small = []
    for i in range(SMALL_FILES):
        path = small_dir / f"{i:04d}.bin"
        path.write_bytes(os.urandom(SMALL_BYTES))
        small.append(path)
    return big, small


class Ours:
    """Our storage seam on a fresh container per repeat."""

    label = "azmanagers"

    def __init__(self, cs: str, container: str) -> None:
        from azmanagers.storage import open_storage

        self.storage = open_storage(f"az://{container}/bench", connection_string=cs)
        self.storage.check()  # creates the container (we hold the account)

    def big_up(self, big: Path) -> None:
        self.storage.put_file(big, "big.bin")

    def big_down(self, dest: Path) -> None:
        self.storage.get_file("big.bin", dest)

    def small_up(self, small: list[Path]) -> None:
        self.storage.put_files([(p, f"small/{p.name}") for p in small])

    def small_down(self, small: list[Path], dest: Path) -> None:
        self.storage.get_files([(f"small/{p.name}", dest / p.name) for p in small])

    def close(self) -> None:
        self.storage.close()


class Sdk:
    """azure-storage-blob called directly: ``concurrency`` per big file, ``threads`` files."""

    def __init__(self, cs: str, container: str, *, concurrency: int, threads: int) -> None:
        from azure.storage.blob import BlobServiceClient

        self.label = f"SDK c={concurrency} t={threads}"
        self.service = BlobServiceClient.from_connection_string(cs)
        self.container = self.service.get_container_client(container)
        self.container.create_container()
        self.concurrency = concurrency
        self.threads = threads

    def big_up(self, big: Path) -> None:
        with open(big, "rb") as data:
            self.container.get_blob_client("bench/big.bin").upload_blob(
                data, max_concurrency=self.concurrency, overwrite=True
            )

    def big_down(self, dest: Path) -> None:
        with open(dest, "wb") as out:
            blob = self.container.get_blob_client("bench/big.bin")
            blob.download_blob(max_concurrency=self.concurrency).readinto(out)

    def _up(self, path: Path) -> None:
        self.container.upload_blob(f"bench/small/{path.name}", path.read_bytes(), overwrite=True)

    def _down(self, path: Path, dest: Path) -> None:
        with open(dest / path.name, "wb") as out:
            self.container.download_blob(f"bench/small/{path.name}").readinto(out)

    def small_up(self, small: list[Path]) -> None:
        if self.threads == 1:
            for path in small:
                self._up(path)
            return
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(self._up, small))

    def small_down(self, small: list[Path], dest: Path) -> None:
        if self.threads == 1:
            for path in small:
                self._down(path, dest)
            return
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda p: self._down(p, dest), small))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.container.delete_container()
        self.service.close()


def one_pass(side: Ours | Sdk, big: Path, small: list[Path], work: Path) -> dict[str, float]:
    """Seconds of the four cases for one side; downloads checked for size, then removed."""
    down = work / f"down-{uuid.uuid4().hex[:8]}"
    (down / "small").mkdir(parents=True)
    times = {
        "big up": timed(lambda: side.big_up(big)),
        "big down": timed(lambda: side.big_down(down / "big.bin")),
        "small up": timed(lambda: side.small_up(small)),
        "small down": timed(lambda: side.small_down(small, down / "small")),
    }
    if (down / "big.bin").stat().st_size != big.stat().st_size:
        raise RuntimeError(f"{side.label}: the big download has the wrong size")
    got = sorted(p.name for p in (down / "small").iterdir())
    if got != [p.name for p in small] or any(
        (down / "small" / p.name).stat().st_size != SMALL_BYTES for p in small
    ):
        raise RuntimeError(f"{side.label}: small downloads missing or of the wrong size")
    subprocess.run(["rm", "-rf", str(down)], check=True)
    return times


def staging(cs: str, big: Path, small: list[Path], work: Path) -> dict[str, dict[str, float]]:
    """Median seconds per case for ours and the careful SDK, alternating which goes first."""
    runs: dict[str, dict[str, list[float]]] = {"ours": {}, "sdk": {}}
    for rep in range(REPEATS):
        order = ("ours", "sdk") if rep % 2 == 0 else ("sdk", "ours")
        for who in order:
            container = f"bench-{who}-{rep}-{uuid.uuid4().hex[:8]}"
            side: Ours | Sdk = (
                Ours(cs, container)
                if who == "ours"
                else Sdk(cs, container, concurrency=SDK_CONCURRENCY, threads=SDK_THREADS)
            )
            try:
                for case, seconds in one_pass(side, big, small, work).items():
                    runs[who].setdefault(case, []).append(seconds)
            finally:
                side.close()
                if who == "ours":  # our seam deletes keys, not containers: free Azurite's memory
                    _drop(cs, container)
        print(f"  repeat {rep + 1}/{REPEATS} done ({' then '.join(order)})", flush=True)
    return {who: {c: statistics.median(v) for c, v in cases.items()} for who, cases in runs.items()}


def _drop(cs: str, container: str) -> None:
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(cs) as service:
        service.get_container_client(container).delete_container()


def dmsbatch(cs: str, big: Path, small: list[Path], work: Path) -> dict[str, float]:
    """dmsbatch's setting, once: max_concurrency=2, small files in series (a subset, scaled)."""
    side = Sdk(cs, f"bench-dms-{uuid.uuid4().hex[:8]}", concurrency=DMS_CONCURRENCY, threads=1)
    subset = small[:DMS_SUBSET]
    scale = len(small) / len(subset)
    try:
        times = one_pass(side, big, subset, work)
    finally:
        side.close()
    return {
        case: seconds * scale if case.startswith("small") else seconds
        for case, seconds in times.items()
    }


def shared_fetches(tmp: Path) -> float:
    """Mean shared-file fetches per node over 50 runs on 4 workers sharing a 32 MiB input."""
    import azmanagers
    from azmanagers import batch

    big = tmp / "shared" / "big.bin"
    big.parent.mkdir(parents=True)
    big.write_bytes(os.urandom(SHARED_BYTES))
    cluster = azmanagers.addprocs("local", SHARED_WORKERS, waitfor=True, timeout=120, nthreads=1)
    try:
        model = batch.Model("m", command="test -r big.bin && sleep 0.05", shared=[str(big)])
        job = batch.submit(
            model.sweep(batch.product(I=range(SHARED_RUNS))),
            name="shared",
            storage=(tmp / "runs").as_uri(),
            cluster=cluster,
            workers=SHARED_WORKERS,
            wait=True,
            timeout=600,
        )
        status = job.status()
        if status.counts.get("succeeded") != SHARED_RUNS:
            raise RuntimeError(f"shared-input sweep did not all succeed: {status}")
        fetches = job._local.driver.fetches  # the driver's count per node
    finally:
        azmanagers.rmprocs(template="local")
    print(f"shared input: {SHARED_RUNS} runs on {SHARED_WORKERS} workers; files fetched per node:")
    for node, count in sorted(fetches.items()):
        print(f"  {node:30} {count}")
    return statistics.fmean(fetches.values()) / 1 if fetches else float("nan")


def report(medians: dict[str, dict[str, float]], dms: dict[str, float]) -> float:
    """Print the table; return the geometric mean of careful-SDK seconds / our seconds."""
    sizes = {"big": BIG_BYTES, "small": SMALL_FILES * SMALL_BYTES}
    columns = (
        ("azmanagers", medians["ours"]),
        (f"SDK careful c={SDK_CONCURRENCY} t={SDK_THREADS}", medians["sdk"]),
        (f"dmsbatch c={DMS_CONCURRENCY} serial*", dms),
    )
    print(
        f"\nmedian of {REPEATS} (dmsbatch: once); big = 1 x {BIG_BYTES // MIB} MiB, "
        f"small = {SMALL_FILES} x {SMALL_BYTES // 1024} KiB"
    )
    print(f"{'':11}" + "".join(f"{label:>24}" for label, _ in columns) + f"{'SDK/ours':>10}")
    print(f"{'case':11}" + f"{'s':>12}{'MiB/s':>12}" * len(columns))
    ratios = []
    for case in CASES:
        size = sizes[case.split()[0]] / MIB
        cells = "".join(f"{v[case]:12.2f}{size / v[case]:12.1f}" for _, v in columns)
        ratio = medians["sdk"][case] / medians["ours"][case]
        ratios.append(ratio)
        print(f"{case:11}{cells}{ratio:9.2f}x")
    print(
        f"* dmsbatch small cases: {DMS_SUBSET} files in series, timed and scaled x"
        f"{SMALL_FILES / DMS_SUBSET:g} (information only, not in the figure)"
    )
    return math.exp(statistics.fmean(math.log(r) for r in ratios))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="azm-bench-") as name:
        tmp = Path(name)
        os.environ["AZMANAGERS_HOME"] = str(tmp / "home")
        big, small = make_files(tmp / "data")
        azurite_dir = tmp / "azurite"
        azurite_dir.mkdir()
        print(f"Azurite staging: {REPEATS} repeats, alternating order", flush=True)
        with running_azurite(azurite_dir) as cs:
            medians = staging(cs, big, small, tmp)
            dms = dmsbatch(cs, big, small, tmp)
        ratio = report(medians, dms)
        per_node = shared_fetches(tmp)
    print(f"figure: shared_input_fetches_per_node {per_node:.2f}")
    print(f"figure: staging_ratio {ratio:.2f} x")


if __name__ == "__main__":
    main()
