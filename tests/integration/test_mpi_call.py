"""``mpi_call``: a function under ``mpiexec -n RANKS`` on a worker's own VM (MPICH from PyPI)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from distributed import Client

import azmanagers
from azmanagers.errors import ConfigError, MpiCallError
from tests.conftest import command_line, eventually, local_client, processes_under

pytestmark = pytest.mark.integration


def _allreduce() -> Callable[[int], tuple[int, int, str]]:
    """The function, made here so that it travels by value (the nodes cannot import tests/)."""

    def allreduce(x: int) -> tuple[int, int, str]:
        import os

        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        node = os.environ["AZMANAGERS_INSTANCE_ID"]
        return comm.allreduce(comm.Get_rank() + x), comm.Get_size(), node

    return allreduce


def _one_rank_fails() -> Callable[[], None]:
    def fails() -> None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_rank() == 1:
            raise ValueError("rank one has no data")
        comm.Barrier()  # the others wait for it: the failure must end them all

    return fails


@pytest.fixture
def client(azm_home: Path) -> Iterator[Client]:
    """A local cluster of 1 process-VM (under the test's own home) and a client of it."""
    del azm_home
    with local_client(1) as client:
        yield client


def test_ranks_run_on_the_workers_vm_and_rank_0s_value_comes_back(client: Client) -> None:
    call = azmanagers.mpi_call(_allreduce(), ranks=3, oversubscribe=True, timeout=120)
    total, size, node = client.submit(call, 10, pure=False).result(timeout=180)
    assert (total, size) == (10 + 11 + 12, 3)
    assert node.startswith("local-")


def test_an_error_in_any_rank_is_raised_with_its_traceback_and_ends_every_rank(
    client: Client,
) -> None:
    call = azmanagers.mpi_call(_one_rank_fails(), ranks=2, oversubscribe=True, timeout=120)
    started = time.monotonic()
    with pytest.raises(MpiCallError, match="rank 1 of 2 raised ValueError: rank one has no data"):
        client.submit(call, pure=False).result(timeout=180)
    assert time.monotonic() - started < 60  # not the timeout: rank 0 was ended at once


def test_a_timeout_kills_every_rank_and_proxy(client: Client, azm_home: Path) -> None:
    call = azmanagers.mpi_call(time.sleep, ranks=2, oversubscribe=True, timeout=3)
    with pytest.raises(MpiCallError, match="did not finish within 3 s"):
        client.submit(call, 600, pure=False).result(timeout=120)
    left = [
        p
        for p in processes_under(azm_home)
        if any(part in " ".join(command_line(p)) for part in ("mpirank", "hydra", "mpiexec"))
    ]
    assert left == []


def test_bad_input_is_refused_clearly(client: Client) -> None:
    with pytest.raises(ConfigError, match="ranks must be a whole number"):
        azmanagers.mpi_call(_allreduce(), ranks=0)
    with pytest.raises(ConfigError, match="needs a function"):
        azmanagers.mpi_call("not a function", ranks=2)  # type: ignore[arg-type]
    too_many = azmanagers.mpi_call(_allreduce(), ranks=10_000)
    with pytest.raises(ConfigError, match="oversubscribe=True"):
        client.submit(too_many, 1, pure=False).result(timeout=60)
    missing = azmanagers.mpi_call(_allreduce(), ranks=1, mpiexec="/nonexistent/mpiexec")
    with pytest.raises(MpiCallError, match="not an executable"):
        client.submit(missing, 1, pure=False).result(timeout=60)
    # a function the node cannot import fails the call, not the worker
    from tests.conftest import command_line

    unknown = azmanagers.mpi_call(command_line, ranks=1)
    with pytest.raises(MpiCallError, match="cannot be loaded on this node"):
        client.submit(unknown, None, pure=False).result(timeout=60)
    assert len(client.scheduler_info()["workers"]) == 1


def _odd_outcomes() -> tuple[Callable[[], object], Callable[[], None]]:
    class Point:  # defined with the function: it travels by value both ways
        def __init__(self, x: int) -> None:
            self.x = x

    def point() -> object:
        return Point(7)

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    def unprintable() -> None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        if comm.Get_rank() == 1:
            raise Unprintable()
        comm.Barrier()

    return point, unprintable


def test_a_value_of_the_callers_own_class_comes_back_and_odd_errors_still_end_the_call(
    client: Client,
) -> None:
    point, unprintable = _odd_outcomes()
    value = client.submit(azmanagers.mpi_call(point, ranks=1, timeout=60), pure=False)
    assert value.result(timeout=120).x == 7
    started = time.monotonic()
    call = azmanagers.mpi_call(unprintable, ranks=2, oversubscribe=True, timeout=120)
    with pytest.raises(MpiCallError, match="rank 1 of 2 raised Unprintable"):
        client.submit(call, pure=False).result(timeout=180)
    assert time.monotonic() - started < 60


def test_cancelling_a_running_call_ends_its_ranks(client: Client, azm_home: Path) -> None:
    call = azmanagers.mpi_call(time.sleep, ranks=2, oversubscribe=True)

    def ranks() -> list[str]:
        found = [" ".join(command_line(p)) for p in processes_under(azm_home)]
        return [line for line in found if any(x in line for x in ("mpirank", "hydra", "mpiexec"))]

    future = client.submit(call, 600, pure=False)
    eventually(lambda: len([r for r in ranks() if "mpirank" in r]) >= 2, "two ranks running", 60)
    future.cancel()
    eventually(lambda: ranks() == [], "no rank, proxy or mpiexec left after the cancel", 30)


def test_a_worker_killed_mid_call_leaves_no_rank(client: Client, azm_home: Path) -> None:
    call = azmanagers.mpi_call(time.sleep, ranks=2, oversubscribe=True)

    def ranks() -> list[psutil.Process]:
        return [
            p
            for p in processes_under(azm_home)
            if any(x in " ".join(command_line(p)) for x in ("mpirank", "hydra", "mpiexec"))
        ]

    client.submit(call, 600, pure=False)
    eventually(lambda: len(ranks()) >= 3, "mpiexec and its ranks running", 60)
    mpiexec = next(p for p in ranks() if "mpiexec" in " ".join(command_line(p)[:1]))
    worker = mpiexec.parent()  # the worker process whose task started it
    assert worker is not None
    os.kill(worker.pid, signal.SIGKILL)
    eventually(lambda: ranks() == [], "the watchdog ends mpiexec, and Hydra its ranks", 30)
