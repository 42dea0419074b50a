"""A breaker's findings on elastic clusters: failed calls keep what exists, bad inputs refused."""

from __future__ import annotations

import logging
import math
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import distributed
import pytest

import azmanagers
from azmanagers.cluster import api
from azmanagers.errors import ClusterClosedError, ConfigError
from tests.conftest import processes_under

pytestmark = pytest.mark.integration
DEADLINE_S = 60.0


def _pools(home: Path) -> list[str]:
    pools = home / "state" / "local" / "pools"
    return sorted(p.name for p in pools.iterdir()) if pools.exists() else []


def test_a_failed_addprocs_keeps_an_existing_cluster_at_target_zero() -> None:
    """Defect 1: a refused grow closed the user's cluster (and its Client) when its target was 0."""
    cluster = azmanagers.addprocs("local", 1)
    client = distributed.default_client()
    cluster.scale(0)
    with pytest.raises(ConfigError, match="at most 16 instances"):
        azmanagers.addprocs("local", 17)
    assert cluster.status.name == "running"
    assert api.clusters() == {"local": cluster}
    assert distributed.default_client() is client
    assert client.status == "running"
    assert client.submit(pow, 3, 2, pure=False) is not None  # the client still takes work
    cluster.scale(1)
    assert cluster.target == 1


def test_a_failed_first_addprocs_leaves_nothing(azm_home: Path) -> None:
    """The cluster a failing call made itself is closed: nothing is left behind."""
    with pytest.raises(ConfigError, match="at most 2 instances"):
        azmanagers.addprocs("local", 3, max_instances=2)
    assert api.clusters() == {}
    assert _pools(azm_home) == []


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, True, False, "5"])
def test_non_finite_and_bool_timeouts_are_refused_at_the_call(
    azm_home: Path, timeout: object
) -> None:
    """Defect 3: ``timeout=nan`` waited forever and ``timeout=True`` meant one second."""
    with pytest.raises(ConfigError, match="timeout must be a finite number of seconds"):
        azmanagers.addprocs("local", 1, waitfor=True, timeout=timeout)  # type: ignore[arg-type]
    assert api.clusters() == {}
    assert _pools(azm_home) == []


def test_wait_for_workers_refuses_non_finite_and_bool_timeouts(fake_python: Path) -> None:
    cluster = azmanagers.addprocs("local", 1, env={"AZMANAGERS_PYTHON": str(fake_python)})
    with pytest.raises(ConfigError, match="timeout must be a finite number"):
        cluster.wait_for_workers(1, timeout=True)
    outcome: list[BaseException] = []

    def wait_nan() -> None:
        try:
            cluster.wait_for_workers(1, timeout=math.nan)
        except BaseException as exc:  # reported to the test's thread
            outcome.append(exc)

    waiter = threading.Thread(target=wait_nan, daemon=True)
    waiter.start()
    waiter.join(10.0)
    assert not waiter.is_alive(), "wait_for_workers(timeout=nan) is still waiting"
    assert isinstance(outcome[0], ConfigError)


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("garbage", "not a host name or address"),
        ("no-such-host.invalid:0", "not a host name or address"),
        ("[::]:0", "IPv6"),
        ("::1:8787", "IPv6"),
        ("127.0.0.1:99999", "port must be from 0 to 65535"),
        ("127.0.0.1:-1", "port"),
        ("127.0.0.1:http", "port"),
        ("192.0.2.1:0", "not an address of this machine"),
    ],
)
def test_bad_dashboard_addresses_are_refused_at_the_call(
    azm_home: Path, address: str, fragment: str
) -> None:
    """Defect 4: a raw socket.gaierror, a raw ValueError, or Dask's misleading 'already in use'."""
    with pytest.raises(ConfigError, match=fragment) as info:
        azmanagers.addprocs("local", 1, dashboard=True, dashboard_address=address)
    assert "dashboard_address" in str(info.value) and "127.0.0.1:8787" in str(info.value)
    assert api.clusters() == {}
    assert _pools(azm_home) == []
    assert processes_under(azm_home) == []


def test_an_env_too_big_for_azure_custom_data_is_refused_before_the_pool(azm_home: Path) -> None:
    """Defect 4: the pool folder was made before the boot script was found too big."""
    with pytest.raises(ConfigError, match="customData limit"):
        azmanagers.addprocs("local", 1, env={"BIG": "x" * 100_000})
    assert api.clusters() == {}
    assert _pools(azm_home) == []


@pytest.mark.parametrize("address", ["0.0.0.0:0", ":0"])
def test_a_dashboard_beyond_loopback_warns_and_links_to_its_real_address(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 5: no warning, and ``dashboard_link`` named 127.0.0.1 for a wildcard bind."""
    with (
        caplog.at_level(logging.WARNING, logger="azmanagers.cluster"),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        cluster = azmanagers.addprocs("local", 1, dashboard=True, dashboard_address=address)
    texts = [str(w.message) for w in caught if "dashboard" in str(w.message)]
    assert any("every network interface" in t and "no authentication" in t for t in texts), texts
    assert any("every network interface" in r.getMessage() for r in caplog.records)
    assert cluster.scheduler is not None and cluster.scheduler.http_server is not None
    bound = [s.getsockname() for s in cluster.scheduler.http_server._sockets.values()]
    assert ("0.0.0.0", bound[0][1]) in [tuple(b[:2]) for b in bound]
    link = urlsplit(cluster.dashboard_link)
    assert link.port == bound[0][1]
    assert link.hostname == socket.gethostname()


def test_a_loopback_dashboard_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cluster = azmanagers.addprocs("local", 1, dashboard=True)
    assert not [w for w in caught if "network interface" in str(w.message)]
    link = urlsplit(cluster.dashboard_link)
    assert link.hostname == "127.0.0.1"
    assert cluster.scheduler is not None and cluster.scheduler.http_server is not None
    assert link.port == cluster.scheduler.http_server.port


@pytest.mark.parametrize("interval", [0, 0.05, 0.0999])
def test_a_reconcile_interval_under_the_floor_is_refused(
    azm_home: Path, monkeypatch: pytest.MonkeyPatch, interval: float
) -> None:
    """Defect 6: 0.05 s was accepted (60,000 ARM reads an hour on Azure)."""
    with pytest.raises(ConfigError, match=r"reconcile_interval_s.*at least 0.1"):
        azmanagers.addprocs("local", 1, reconcile_interval_s=interval)
    monkeypatch.setenv("AZMANAGERS_RECONCILE_INTERVAL_S", str(interval))
    with pytest.raises(ConfigError, match=r"AZMANAGERS_RECONCILE_INTERVAL_S.*at least 0.1"):
        azmanagers.addprocs("local", 1)
    assert api.clusters() == {}
    assert _pools(azm_home) == []


def test_a_reconcile_interval_faster_than_the_pace_warns_once_with_its_reads_per_hour(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="azmanagers.cluster"):
        cluster = azmanagers.addprocs("local", 1, reconcile_interval_s=0.25)
        cluster.scale(2)
        cluster.scale(1)
    fast = [r.getMessage() for r in caplog.records if "reconcile_interval_s" in r.getMessage()]
    assert len(fast) == 1, fast
    assert "14400 lists an hour" in fast[0] and "0.5 s" in fast[0]
    caplog.clear()
    azmanagers.rmprocs()
    with caplog.at_level(logging.WARNING, logger="azmanagers.cluster"):
        azmanagers.addprocs("local", 1, reconcile_interval_s=1.0)
    assert not [r for r in caplog.records if "reconcile_interval_s" in r.getMessage()]


def test_a_users_thread_count_applies_to_every_blas_library() -> None:
    """Defect 7: OMP_NUM_THREADS=2 left OPENBLAS_NUM_THREADS=1, so OpenBLAS kept one thread."""

    def blas() -> tuple[list[int], dict[str, str | None]]:
        import os

        import numpy
        import threadpoolctl

        numpy.ones((4, 4)) @ numpy.ones((4, 4))
        pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        return [int(p["num_threads"]) for p in pools], {k: os.environ.get(k) for k in names}

    azmanagers.addprocs("local", 1, waitfor=True, timeout=DEADLINE_S, env={"OMP_NUM_THREADS": "2"})
    client = distributed.default_client()
    threads, environ = client.submit(blas, pure=False).result(timeout=DEADLINE_S)
    assert environ == {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert threads and all(n == 2 for n in threads), threads


def test_adapt_and_get_logs_on_a_closed_cluster_say_it_is_closed() -> None:
    """Defect 8: adapt() returned an Adaptive; get_logs() raised a bare RuntimeError."""
    cluster = azmanagers.addprocs("local", 1)
    azmanagers.rmprocs()
    with pytest.raises(ClusterClosedError, match="closed"):
        cluster.adapt(minimum=0, maximum=2)
    with pytest.raises(ClusterClosedError, match="closed"):
        cluster.get_logs()
