"""Real Dask workers on the local provider: join, scale, adapt, remove, replace, fail, close."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import dask
import distributed
import pytest

import azmanagers
from azmanagers.cluster import api
from azmanagers.errors import ConfigError, InstanceFailedError, WaitTimeoutError
from tests.conftest import eventually, processes_under

pytestmark = pytest.mark.integration
# Workers, like remote VMs, cannot import this test module: tasks use builtins, lambdas and
# nested functions, which Dask ships by value.
DEADLINE_S = 60.0


def test_addprocs_returns_at_once_then_workers_join_elastically() -> None:
    cluster = azmanagers.addprocs("local", 2)
    assert cluster.nworkers() == 0  # returned before any worker could boot
    assert cluster.target == 2
    cluster.wait_for_workers(2, timeout=DEADLINE_S)
    # a second call grows the same cluster
    again = azmanagers.addprocs("local", 2, waitfor=True, timeout=DEADLINE_S)
    assert again is cluster
    assert azmanagers.nworkers() == 4
    assert azmanagers.nworkers_provisioned() == 4
    assert sorted(azmanagers.workers()) == sorted(cluster.join_times)
    # the default client is bound to the cluster
    client = distributed.default_client()
    assert client.scheduler.address == cluster.scheduler_address
    assert client.submit(pow, 7, 2).result(timeout=30) == 49
    total = dask.compute(*[dask.delayed(pow)(i, 2) for i in range(8)])
    assert sum(total) == sum(i * i for i in range(8))
    ran_on = {
        r for r in client.gather(client.map(lambda i: distributed.get_worker().name, range(8)))
    }
    assert ran_on <= set(azmanagers.workers())


def test_scale_up_and_down_converges() -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S)
    cluster.scale(3)
    cluster.wait_for_workers(3, timeout=DEADLINE_S)
    cluster.scale(1)
    eventually(lambda: cluster.nworkers() == 1, "scale-down to one worker", timeout=DEADLINE_S)
    instances = (
        Path(os.environ["AZMANAGERS_HOME"]) / "state/local/pools" / cluster.pool / "instances"
    )
    eventually(
        lambda: len(list(instances.iterdir())) == 1,
        "the removed instances to be deleted",
        timeout=DEADLINE_S,
    )
    (kept,) = list(instances.iterdir())
    eventually(
        lambda: all(
            kept.name in p.environ()["AZMANAGERS_INSTANCE_DIR"]
            for p in processes_under(Path(os.environ["AZMANAGERS_HOME"]))
        ),
        "only the kept instance's processes to remain",
        timeout=DEADLINE_S,
    )
    assert cluster.nworkers_provisioned() == 1
    assert list(cluster.failures) == []


def test_adapt_grows_under_load_and_shrinks_when_idle() -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S)
    client = distributed.default_client()
    cluster.adapt(minimum=1, maximum=3, interval="200ms", wait_count=3, target_duration="1s")
    futures = client.map(lambda i: time.sleep(1.5) or i, range(12), pure=False)
    eventually(
        lambda: cluster.nworkers() >= 2, "adapt to add workers under load", timeout=DEADLINE_S
    )
    assert sorted(client.gather(futures)) == list(range(12))
    del futures
    eventually(
        lambda: cluster.nworkers() == 1, "adapt to shrink back when idle", timeout=DEADLINE_S
    )
    assert list(cluster.failures) == []
    cluster.raise_if_failed()


def test_adapt_defaults_its_maximum_to_the_template_limit() -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S, max_instances=2)
    adaptive = cluster.adapt(minimum=1)
    assert adaptive.maximum == 2
    with pytest.raises(ConfigError, match="exceeds the template's max_instances"):
        cluster.adapt(minimum=1, maximum=5)


def test_client_restart_keeps_every_instance() -> None:
    cluster = azmanagers.addprocs("local", 2, waitfor=True, timeout=DEADLINE_S)
    before = set(azmanagers.workers())
    client = distributed.default_client()
    client.restart(timeout=DEADLINE_S)
    eventually(
        lambda: set(azmanagers.workers()) == before,
        "the restarted workers to rejoin",
        timeout=DEADLINE_S,
    )
    cycles = cluster.reconcile_cycles
    eventually(
        lambda: cluster.reconcile_cycles >= cycles + 2,
        "two more reconcile cycles",
        timeout=DEADLINE_S,
    )
    assert list(cluster.failures) == []
    assert cluster.target == 2
    assert client.submit(pow, 2, 5).result(timeout=30) == 32


def test_a_new_scale_clears_an_earlier_failure(azm_home: Path) -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S, max_replacements=0)
    (leader,) = [p for p in processes_under(azm_home) if p.pid == os.getsid(p.pid)]
    os.killpg(leader.pid, signal.SIGKILL)
    eventually(
        lambda: cluster.target == 0,
        "the unreplaced failure to lower the target",
        timeout=DEADLINE_S,
    )
    with pytest.raises(InstanceFailedError):
        cluster.raise_if_failed()
    azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S)  # not poisoned
    assert cluster.nworkers() == 1


def test_rmprocs_by_count_by_name_and_all(azm_home: Path) -> None:
    cluster = azmanagers.addprocs("local", 4, waitfor=True, timeout=DEADLINE_S)
    azmanagers.rmprocs(1)
    assert cluster.nworkers() == 3
    name = azmanagers.workers()[0]
    azmanagers.rmprocs([name])
    assert name not in azmanagers.workers()
    assert cluster.nworkers() == 2
    assert cluster.target == 2
    with pytest.raises(ConfigError, match="no worker or instance named"):
        azmanagers.rmprocs(["no-such-worker"])
    azmanagers.rmprocs()
    assert api.clusters() == {}
    assert processes_under(azm_home) == []
    assert not (azm_home / "state" / "local" / "pools" / cluster.pool).exists()


def test_killed_worker_is_replaced(azm_home: Path) -> None:
    cluster = azmanagers.addprocs("local", 2, waitfor=True, timeout=DEADLINE_S)
    victim = azmanagers.workers()[0]
    leader = [
        p for p in processes_under(azm_home) if victim in p.environ()["AZMANAGERS_INSTANCE_DIR"]
    ]
    assert leader
    os.killpg(os.getsid(leader[0].pid), signal.SIGKILL)
    eventually(
        lambda: victim not in azmanagers.workers() and cluster.nworkers() == 2,
        "a replacement worker to join",
        timeout=DEADLINE_S,
    )
    assert [f[0] for f in cluster.failures] == [victim]
    assert (
        cluster.failures[0][1]
        in (
            "the provider reports it failed after joining",  # the whole group was killed
            "its worker left the cluster and did not come back",
        )
        or "exit status" in cluster.failures[0][1]
    )
    assert client_sum() == 285


def client_sum() -> int:
    client = distributed.default_client()
    return sum(client.gather(client.map(pow, range(10), [2] * 10)))


def test_failing_boot_is_reported_with_its_log() -> None:
    with pytest.raises(InstanceFailedError) as info:
        azmanagers.addprocs(
            "local",
            1,
            waitfor=True,
            timeout=DEADLINE_S,
            env={"AZMANAGERS_PYTHON": "/nonexistent/bin/python3"},
            max_replacements=1,
        )
    err = info.value
    assert err.instance.startswith("local-")
    assert err.instance in str(err)
    assert "No such file or directory" in str(err)
    assert "replacement budget (1 per" in str(err)
    cluster = api.clusters()["local"]
    assert len(cluster.failures) == 2  # the first, and its one replacement
    eventually(
        lambda: cluster.nworkers_provisioned() == 0,
        "failed instances to be deleted",
        timeout=DEADLINE_S,
    )


def test_instance_that_never_joins_is_deleted_after_its_deadline(fake_python: Path) -> None:
    with pytest.raises(InstanceFailedError, match=r"did not join within 1\.5 s") as info:
        azmanagers.addprocs(
            "local",
            1,
            waitfor=True,
            timeout=DEADLINE_S,
            env={"AZMANAGERS_PYTHON": str(fake_python)},
            join_timeout_s=1.5,
            max_replacements=1,
        )
    assert "pretending to start" in info.value.log_tail


def test_waitfor_timeout_says_how_many_joined(fake_python: Path) -> None:
    with pytest.raises(WaitTimeoutError, match=r"0 of 2 workers joined .* within 1\.5 s") as info:
        azmanagers.addprocs(
            "local",
            2,
            waitfor=True,
            timeout=1.5,
            env={"AZMANAGERS_PYTHON": str(fake_python)},
        )
    assert "still booting" in str(info.value)
    assert "pretending to start" in str(info.value)


def test_worker_log_records_reach_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    azmanagers.addprocs("local", 2, waitfor=True, timeout=DEADLINE_S)
    client = distributed.default_client()

    def shout(i: int) -> str:
        logging.getLogger("user.model").warning("step %d done", i)
        return str(distributed.get_worker().name)

    with caplog.at_level(logging.INFO, logger="azmanagers.worker"):
        names = client.gather(client.map(shout, range(4)))
        eventually(
            lambda: len([r for r in caplog.records if "step" in r.getMessage()]) == 4,
            "four forwarded log records",
            timeout=20,
        )
    records = [r for r in caplog.records if "step" in r.getMessage()]
    assert {r.worker for r in records} == set(names)  # type: ignore[attr-defined]
    assert all(r.name == f"azmanagers.worker.{r.worker}" for r in records)  # type: ignore[attr-defined]
    assert all(r.levelno == logging.WARNING for r in records)
    assert all(r.remote_logger == "user.model" for r in records)  # type: ignore[attr-defined]


def test_boot_logs_are_retrievable() -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S)
    logs = cluster.get_logs()
    boot = [k for k in logs if k.startswith("boot:")]
    assert len(boot) == 1
    assert "azmanagers: boot" in logs[boot[0]]
    # the agent says "joined" just after the scheduler has it (which waitfor waits for)
    eventually(lambda: "joined" in cluster.get_logs()[boot[0]], "the boot log's joined line", 20)


def test_close_leaves_no_process_and_no_pool(azm_home: Path) -> None:
    with azmanagers.addprocs("local", 2, waitfor=True, timeout=DEADLINE_S) as cluster:
        assert len(processes_under(azm_home)) >= 2
    assert processes_under(azm_home) == []
    assert not (azm_home / "state" / "local" / "pools" / cluster.pool).exists()
    with pytest.raises(azmanagers.ClusterClosedError):
        cluster.scale(3)


def test_bad_input_is_refused_with_clear_errors() -> None:
    with pytest.raises(ConfigError, match="whole number >= 1"):
        azmanagers.addprocs("local", 0)
    with pytest.raises(ConfigError, match="whole number >= 1"):
        azmanagers.addprocs("local", "2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown keyword 'join_timeout'.*join_timeout_s"):
        azmanagers.addprocs("local", 1, join_timeout=3)
    with pytest.raises(ConfigError, match="local"):
        azmanagers.addprocs("no-such-template", 1)
    with pytest.raises(ConfigError, match="at most 16 instances"):
        azmanagers.addprocs("local", 17)
    with pytest.raises(ConfigError, match="timeout"):
        azmanagers.addprocs("local", 1, timeout=-1)
    assert api.clusters() == {}


def test_a_saved_local_template_sets_threads_and_limits() -> None:
    azmanagers.save_template_scaleset(
        "mylocal", {"provider": "local", "nthreads": 2, "max_instances": 2}
    )
    azmanagers.addprocs("mylocal", 1, waitfor=True, timeout=DEADLINE_S)
    client = distributed.default_client()
    info = client.scheduler_info()["workers"]
    assert [w["nthreads"] for w in info.values()] == [2]
    with pytest.raises(ConfigError, match="at most 2 instances"):
        api.clusters()["mylocal"].scale(3)


def test_an_unwritable_home_is_a_clear_error_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AZMANAGERS_HOME", str(blocker / "home"))
    with pytest.raises(ConfigError, match="Set AZMANAGERS_HOME to a writable folder"):
        azmanagers.addprocs("local", 1)
    assert api.clusters() == {}


@pytest.mark.parametrize(
    ("keywords", "fragment"),
    [
        ({"env": {"1BAD": "x"}}, "variable name '1BAD'"),
        ({"env": {"A-B": "x"}}, "variable name 'A-B'"),
        ({"memory_limit": "lots"}, "memory_limit"),
        ({"memory_limit": "-4GiB"}, "memory_limit"),
        ({"memory_limit": -1}, "memory_limit"),
    ],
)
def test_bad_env_names_and_memory_limits_are_refused_before_anything_is_made(
    azm_home: Path, keywords: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        azmanagers.addprocs("local", 1, **keywords)  # type: ignore[arg-type]
    assert "use " in str(info.value)  # the message says what to write instead
    assert api.clusters() == {}
    pools = azm_home / "state" / "local" / "pools"
    assert not pools.exists() or list(pools.iterdir()) == []
    assert processes_under(azm_home) == []


def test_memory_limits_dask_understands_are_accepted() -> None:
    cluster = azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S, memory_limit="1GiB")
    info = distributed.default_client().scheduler_info()["workers"]
    assert [w["memory_limit"] for w in info.values()] == [2**30]
    assert cluster.settings.memory_limit == "1GiB"


def test_workers_get_one_blas_thread_as_dask_gives_a_worker_it_spawns() -> None:
    """Dask's pre-spawn-environ (OMP/MKL/OPENBLAS_NUM_THREADS=1) reaches forked workers."""

    def blas_pools() -> list[dict[str, object]]:
        import numpy
        import threadpoolctl

        numpy.ones((4, 4)) @ numpy.ones((4, 4))
        return [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S)
    client = distributed.default_client()
    pools = client.submit(blas_pools, pure=False).result(timeout=DEADLINE_S)
    assert pools, "numpy loaded no BLAS library on the worker"
    assert [p["num_threads"] for p in pools] == [1] * len(pools), pools
    azmanagers.rmprocs()
    # a value the user sets wins over Dask's default
    azmanagers.addprocs(
        "local", 1, waitfor=True, timeout=DEADLINE_S, env={"OPENBLAS_NUM_THREADS": "2"}
    )
    client = distributed.default_client()
    pools = client.submit(blas_pools, pure=False).result(timeout=DEADLINE_S)
    assert [p["num_threads"] for p in pools if p["internal_api"] == "openblas"] == [2], pools
