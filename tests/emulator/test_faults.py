"""Faults injected into the emulator: the azure provider and the reconciler ride them out."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import azmanagers
from azmanagers.emulator import Emulator, start_emulator

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0
SUB_LIMITS = "00000000-0000-0000-0000-0000000000cc"


def _admin(emu: Emulator, body: object | None, token: str | None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        emu.server.base_url + "/azmanagers-admin/faults",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_the_admin_route_sets_faults_and_wants_the_token() -> None:
    emu = start_emulator()
    try:
        status, body = _admin(emu, {"throttle_rate": 0.25, "never_join": 2}, emu.server.token)
        assert status == 200 and body["throttle_rate"] == 0.25 and body["never_join"] == 2
        assert emu.state.faults.never_join == 2
        assert _admin(emu, {"throttle_rate": 1}, None)[0] == 401
        status, body = _admin(emu, {"no_such_fault": 1}, emu.server.token)
        assert status == 400 and "unknown fault" in json.dumps(body)
        assert _admin(emu, None, emu.server.token)[1]["throttle_rate"] == 0.25
    finally:
        emu.stop()


def test_a_throttling_storm_slows_the_cluster_but_every_worker_joins(
    emulated_azure: Emulator,
) -> None:
    emulated_azure.state.faults.update({"throttle_rate": 0.3, "error_rate": 0.1})
    cluster = azmanagers.addprocs("myscaleset", 2, waitfor=True, timeout=DEADLINE_S)
    assert cluster.nworkers() == 2
    injected = emulated_azure.state.faults.injected
    assert injected.get("throttled", 0) > 0
    calls = len(emulated_azure.server.calls)
    assert calls < 200, f"{calls} ARM calls: retries are not bounded"
    throttled = [c for c in emulated_azure.server.calls if c.status == 429]
    assert len(throttled) == injected["throttled"]


def test_failed_provisioning_is_replaced(emulated_azure: Emulator) -> None:
    emulated_azure.state.faults.update({"fail_provisioning": 1})
    cluster = azmanagers.addprocs("myscaleset", 2, waitfor=True, timeout=DEADLINE_S)
    assert cluster.nworkers() == 2
    assert [reason for _, reason, _ in cluster.failures] == [
        "the provider reports it failed before it joined"
    ]


def test_a_vm_that_never_joins_is_deleted_at_its_deadline_and_replaced(
    emulated_azure: Emulator,
) -> None:
    emulated_azure.state.faults.update({"never_join": 1})
    cluster = azmanagers.addprocs(
        "myscaleset", 2, waitfor=True, timeout=DEADLINE_S, join_timeout_s=4
    )
    assert cluster.nworkers() == 2
    (stuck, reason, _), *_ = list(cluster.failures)
    assert reason == "it did not join within 4 s"
    deadline = time.monotonic() + 30
    vms = {vm.name for s in emulated_azure.state.scalesets.values() for vm in s.vms.values()}
    while stuck in vms and time.monotonic() < deadline:
        time.sleep(0.2)
        vms = {vm.name for s in emulated_azure.state.scalesets.values() for vm in s.vms.values()}
    assert stuck not in vms


def test_not_enough_quota_fails_at_once_and_leaves_nothing(emulated_azure: Emulator) -> None:
    from azmanagers.cluster import api
    from azmanagers.errors import QuotaError

    emulated_azure.state.faults.update({"family_cores_limit": 4})
    started = time.monotonic()
    with pytest.raises(QuotaError) as info:
        azmanagers.addprocs("myscaleset", 3, waitfor=True, timeout=DEADLINE_S)
    assert time.monotonic() - started < 30  # no waiting for capacity that cannot come
    message = str(info.value)
    assert "3 regular x Standard_D2s_v3" in message
    assert "family standardDSv3Family needs 6 vCPUs but 4 of 4 are free" in message
    assert "Usage + quotas" in message
    assert api.clusters() == {}
    assert emulated_azure.state.scalesets == {}
    # within the quota it works, and the next step beyond it is refused the same way
    cluster = azmanagers.addprocs("myscaleset", 2, waitfor=True, timeout=DEADLINE_S)
    with pytest.raises(QuotaError, match="0 of 4 are free"):
        azmanagers.addprocs("myscaleset", 1)
    assert cluster.target == 2


def test_azm_emulator_serve_writes_its_variables_and_stops_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from azmanagers.providers.azure._clients import ArmSettings, resource_client

    folder = tmp_path / "served"
    proc = subprocess.Popen(
        [sys.executable, "-m", "azmanagers", "emulator", "serve", "--folder", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        env_file = folder / "emulator.env"
        deadline = time.monotonic() + 30
        while not env_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        env = dict(
            line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines()
        )
        token = env["AZMANAGERS_ARM_TOKEN"]
        settings = ArmSettings(env["AZMANAGERS_ARM_ENDPOINT"], env["AZMANAGERS_ARM_CA"], token, 0)
        group = resource_client(settings, "00000000-0000-0000-0000-0000000000cc")
        assert group.resource_groups.create_or_update("rg", {"location": "x"}).name == "rg"
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "source" in out and "emulator stopped" in out
        assert token not in out  # the token goes to the 0600 file only
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_never_joining_vm_is_reported_with_its_serial_log(emulated_azure: Emulator) -> None:
    from azmanagers.errors import InstanceFailedError

    emulated_azure.state.faults.update({"never_join": 2})
    with pytest.raises(InstanceFailedError) as info:
        azmanagers.addprocs(
            "myscaleset", 1, waitfor=True, timeout=DEADLINE_S, join_timeout_s=3, max_replacements=1
        )
    assert "never starts its agent" in info.value.log_tail  # fetched through boot diagnostics
    assert "never starts its agent" in str(info.value)
    # the serial-log URL works without the bearer token but not without its signature
    url = emulated_azure.server.base_url + "/azmanagers-blob/serial/nope?sig=bad"
    context = ssl.create_default_context(cafile=str(emulated_azure.server.ca_file))
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert denied.value.code == 403


def _arm_get(emu: Emulator, path: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"{emu.server.base_url}{path}?api-version=2022-09-01",
        headers={"Authorization": f"Bearer {emu.server.token}"},
    )
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            return reply.status, dict(reply.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def test_arm_answers_carry_the_remaining_limit_and_a_spent_limit_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azmanagers.errors import ThrottledError
    from azmanagers.providers.azure.provider import AzureProvider

    emu = start_emulator()
    try:
        for key, value in emu.environment().items():
            monkeypatch.setenv(key, value)
        path = f"/subscriptions/{SUB_LIMITS}/providers/Microsoft.Compute/skus"
        header = "x-ms-ratelimit-remaining-subscription-reads"
        first = _arm_get(emu, path)
        second = _arm_get(emu, f"/subscriptions/{SUB_LIMITS}/resourceGroups/missing")
        assert first[0] == 200 and second[0] == 404
        assert int(first[1][header]) == 11_999 and int(second[1][header]) == 11_998
        # spend the hour's reads: ARM answers 429 with a long Retry-After; the provider does
        # not sleep through it but raises at once, naming the wait
        emu.state.faults.update({"reads_per_hour": 3})
        assert _arm_get(emu, path)[0] == 200
        status, headers = _arm_get(emu, path)
        assert status == 429 and int(headers["Retry-After"]) > 3000 and headers[header] == "0"
        started = time.monotonic()
        with pytest.raises(ThrottledError, match=r"Azure asks to wait \d+ s"):
            AzureProvider(SUB_LIMITS, "rg").list_instances("pool")
        assert time.monotonic() - started < 30
        assert emu.state.faults.snapshot()["reads_per_hour"] == 3
    finally:
        emu.stop()


def test_slow_boots_join_late_or_are_replaced_past_their_deadline(
    emulated_azure: Emulator,
) -> None:
    faults = emulated_azure.state.faults
    faults.update({"slow_boot": 1, "slow_boot_s": 2})
    cluster = azmanagers.addprocs(
        "myscaleset", 2, waitfor=True, timeout=DEADLINE_S, join_timeout_s=10
    )
    assert cluster.nworkers() == 2 and not cluster.failures  # late, within its deadline
    assert faults.injected["slow_boot"] == 1
    slow = f"{cluster.pool}_0"
    runner = emulated_azure.state.runner
    assert runner is not None
    (vm_id,) = [k for k, vm in runner.identities.items() if vm.name == slow]
    assert "a slow boot (2 s)" in runner.boot_log(vm_id, 4096)

    faults.update({"slow_boot": 1, "slow_boot_s": 120})
    cluster = azmanagers.addprocs("myscaleset", 1, waitfor=True, timeout=DEADLINE_S)
    assert cluster.nworkers() == 3
    assert [reason for _, reason, _ in cluster.failures] == ["it did not join within 10 s"]


def test_scaling_from_the_event_loop_checks_quota_off_the_loop(
    emulated_azure: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Dask's adaptive scaling calls scale() on the event loop: quota is checked in a
    thread, then the target is set; short quota leaves the target and says why."""
    emulated_azure.state.faults.update({"family_cores_limit": 4})  # two Standard_D2s_v3
    cluster = azmanagers.addprocs("myscaleset", 1, waitfor=True, timeout=DEADLINE_S)
    cluster.loop.add_callback(cluster.scale, 2)
    deadline = time.monotonic() + 30
    while cluster.target != 2:
        assert time.monotonic() < deadline, "a scale made on the loop never took effect"
        time.sleep(0.05)
    cluster.loop.add_callback(cluster.scale, 5)
    while "not scaling to 5 workers" not in caplog.text:
        assert time.monotonic() < deadline, "a short quota on the loop was not reported"
        time.sleep(0.05)
    assert cluster.target == 2
    assert "standardDSv3Family" in caplog.text


def _list_calls(emu: Emulator, pool: str) -> int:
    """How many times the pool's VMs were listed (one GET per reconcile list)."""
    listing = f"/virtualmachinescalesets/{pool.lower()}/virtualmachines"
    return sum(
        1
        for c in emu.server.calls_matching("GET")
        if c.path.split("?", 1)[0].lower().endswith(listing)
    )


def test_a_steady_cluster_lists_its_pool_at_the_providers_pace(
    emulated_azure: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Joins come from the scheduler: the pool is listed every steady_s once nothing changes,
    and every after_change_s within change_window_s of a change."""
    from azmanagers.providers.azure.provider import AzureProvider
    from azmanagers.providers.base import Pace

    pace = Pace(steady_s=2.0, after_change_s=0.5, change_window_s=4.0)
    monkeypatch.setattr(AzureProvider, "pace", pace)
    cluster = azmanagers.addprocs("myscaleset", 1, waitfor=True, timeout=DEADLINE_S)
    assert cluster.reconciler.pace == pace
    time.sleep(pace.change_window_s + pace.steady_s)  # the join was the last change
    window_s = 8.0
    before = _list_calls(emulated_azure, cluster.pool)
    time.sleep(window_s)
    steady = _list_calls(emulated_azure, cluster.pool) - before
    assert 1 <= steady <= window_s / pace.steady_s + 2, f"{steady} lists in {window_s} s"
    # a user's scale is a change: the pool is listed at the fast pace again
    cluster.scale(2)
    before = _list_calls(emulated_azure, cluster.pool)
    cluster.wait_for_workers(2, timeout=DEADLINE_S)
    time.sleep(2.0)
    assert _list_calls(emulated_azure, cluster.pool) - before >= 3


def test_a_429_with_a_long_retry_after_stops_every_call_until_it_passes(
    emulated_azure: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from azmanagers.errors import ThrottledError

    cluster = azmanagers.addprocs(
        "myscaleset", 1, waitfor=True, timeout=DEADLINE_S, reconcile_interval_s=0.25
    )
    server = emulated_azure.server
    with caplog.at_level(logging.WARNING, logger="azmanagers.cluster"):
        emulated_azure.state.faults.update({"reads_per_hour": 0})  # the hour's reads are spent
        deadline = time.monotonic() + 30
        while not [c for c in server.calls if c.status == 429]:
            assert time.monotonic() < deadline, "the reconciler made no read"
            time.sleep(0.1)
        spent = len(server.calls)
        with pytest.raises(ThrottledError, match=r"not checking the quota.*\d+ s more"):
            cluster.scale(3)  # the quota check is a read: refused here, not sent
        cluster.scale(0)  # a scale-down needs no quota: the target moves, no call is made
        time.sleep(5.0)  # 20 reconcile intervals
    assert len(server.calls) == spent, server.calls[spent:]
    assert cluster.target == 0
    throttled = [r for r in caplog.records if "throttling us" in r.getMessage()]
    assert len(throttled) == 1, [r.getMessage() for r in throttled]
    assert re.search(r"no provider calls for \d{4} s", throttled[0].getMessage())
    emulated_azure.state.faults.update({"reads_per_hour": 12_000})  # let the teardown read


def _scale_sets(emu: Emulator) -> list[str]:
    return [name for (_, _, name) in emu.state.scalesets]


def test_close_while_arm_throttles_for_long_raises_naming_the_pool_left(
    emulated_azure: Emulator,
) -> None:
    """Breaker b3: a DELETE answered 429 (Retry-After ~1 h) was only logged; rmprocs returned
    and the scale set stayed, billing. Now everything local closes, then rmprocs raises."""
    import distributed

    from azmanagers.cluster import api
    from azmanagers.errors import ThrottledError

    cluster = azmanagers.addprocs("myscaleset", 1)
    client = distributed.default_client()
    emulated_azure.state.faults.update({"throttle_rate": 1.0, "retry_after_s": 3500})
    try:
        started = time.monotonic()
        with pytest.raises(ThrottledError) as info:
            azmanagers.rmprocs()
        assert time.monotonic() - started < 60  # no sleeping through an hour's Retry-After
        message = str(info.value)
        assert cluster.pool in message and "azm gc" in message, message
        assert "once this process has exited" in message
        assert re.search(r"accepts calls again in about \d+ s \(at \d\d:\d\d:\d\d UTC\)", message)
        assert info.value.retry_after_s > 3000
        # everything local is closed: no cluster, no scheduler, no client
        assert cluster.status.name == "closed" and api.clusters() == {}
        assert client.status == "closed"
        assert cluster.pool.lower() in _scale_sets(emulated_azure)
    finally:
        emulated_azure.state.faults.update({"throttle_rate": 0.0})
        cluster.provider.delete_pool(cluster.pool, wait=True)
    assert _scale_sets(emulated_azure) == []


def test_close_retries_a_delete_throttled_for_a_short_while(emulated_azure: Emulator) -> None:
    """A short Retry-After is waited out within close's deadline: the scale set is deleted."""
    import threading

    cluster = azmanagers.addprocs("myscaleset", 1)
    emulated_azure.state.faults.update({"throttle_rate": 1.0, "retry_after_s": 2})
    # the SDK retries a 2 s Retry-After six times (~12 s); the throttling lasts longer
    lift = threading.Timer(16.0, emulated_azure.state.faults.update, [{"throttle_rate": 0.0}])
    lift.start()
    try:
        azmanagers.rmprocs()
    finally:
        lift.cancel()
        emulated_azure.state.faults.update({"throttle_rate": 0.0})
    assert cluster.status.name == "closed"
    assert cluster.pool.lower() not in _scale_sets(emulated_azure)
