"""Opt-in tests against real Azure: ``pytest -m azure``, skipped without the settings below.

Set, in the environment that runs pytest:

- ``AZMANAGERS_TEST_AZURE_HOME``: an AZMANAGERS_HOME holding a manifest and a scale-set
  template whose image has Python with azmanagers installed;
- ``AZMANAGERS_TEST_AZURE_TEMPLATE``: that template's name;
- ``AZMANAGERS_TEST_SCHEDULER_HOST``: this machine's address as the VMs reach it (run the
  tests from a VM in the same virtual network);
- credentials for ``DefaultAzureCredential`` (``az login``, a managed identity, or a service
  principal in ``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` / ``AZURE_CLIENT_SECRET``).

The tests create a scale set (one Uniform, one Flexible with a regular/spot mix), join two
workers, compute, and tear everything down.
"""

from __future__ import annotations

import os

import pytest

# Read before the autouse fixture clears AZMANAGERS_* from the environment.
HOME = os.environ.get("AZMANAGERS_TEST_AZURE_HOME")
TEMPLATE = os.environ.get("AZMANAGERS_TEST_AZURE_TEMPLATE")
SCHEDULER_HOST = os.environ.get("AZMANAGERS_TEST_SCHEDULER_HOST")

pytestmark = [
    pytest.mark.azure,
    pytest.mark.skipif(
        not (HOME and TEMPLATE and SCHEDULER_HOST),
        reason="real-Azure tests need AZMANAGERS_TEST_AZURE_HOME, _TEMPLATE and "
        "AZMANAGERS_TEST_SCHEDULER_HOST",
    ),
]


@pytest.fixture
def real_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZMANAGERS_ARM_ENDPOINT", "AZMANAGERS_ARM_TOKEN", "AZMANAGERS_IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZMANAGERS_HOME", str(HOME))


def test_two_workers_join_compute_and_leave_nothing(real_azure: None) -> None:
    import distributed

    import azmanagers

    cluster = azmanagers.addprocs(
        str(TEMPLATE),
        2,
        waitfor=True,
        timeout=1200,
        scheduler_host=SCHEDULER_HOST,
        worker_host=None,
        join_timeout_s=900,
    )
    try:
        client = distributed.default_client()
        assert sum(client.gather(client.map(pow, range(4), [2] * 4))) == 14
    finally:
        azmanagers.rmprocs()
    assert not [r for r in azmanagers.gc(dry_run=True) if r.cluster == cluster.name]


def test_a_regular_spot_mix_joins_and_is_deleted_by_name(real_azure: None) -> None:
    """A Flexible scale set with a priority mix: the one base VM is regular, the other spot."""
    import distributed

    import azmanagers

    cluster = azmanagers.addprocs(
        str(TEMPLATE),
        2,
        waitfor=True,
        timeout=1200,
        scheduler_host=SCHEDULER_HOST,
        worker_host=None,
        join_timeout_s=900,
        spot=True,
        spot_base_regular_priority_count=1,
    )
    try:
        client = distributed.default_client()
        assert client.submit(sum, [1, 2, 3]).result(timeout=120) == 6
        azmanagers.rmprocs([sorted(azmanagers.workers())[0]])  # a batched delete by VM name
        assert cluster.nworkers() == 1
    finally:
        azmanagers.rmprocs()
    assert not [r for r in azmanagers.gc(dry_run=True) if r.cluster == cluster.name]
