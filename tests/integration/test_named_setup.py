"""A named cluster's setup script: it runs before each worker joins; a node whose setup fails
is named with its log and replaced, and the cluster stays usable; a wait that runs out says how
many nodes joined and shows the boot log of one that did not."""

from __future__ import annotations

from pathlib import Path

import pytest

import azmanagers
from azmanagers.errors import WaitTimeoutError
from azmanagers.named.stop import stop_cluster

pytestmark = pytest.mark.integration

FAILS_ON_SECOND = """echo "setup on $AZMANAGERS_INSTANCE_ID"
if [ "$AZMANAGERS_INSTANCE_ID" = t-setup-0001 ]; then echo "no disk for me" >&2; exit 3; fi
touch "$AZMANAGERS_INSTANCE_DIR/ready"
"""


def test_a_failed_setup_names_its_node_with_its_log_and_the_node_is_replaced(
    azm_home: Path,
) -> None:
    name = "t-setup"
    try:
        cluster = azmanagers.start_cluster(
            name, nodes=2, setup=FAILS_ON_SECOND, wait=True, timeout=120
        )
        status = cluster.status()
        assert status.joined == 2
        assert "t-setup-0001" not in {n.name for n in status.nodes}
        assert any(f.startswith("t-setup-0001") for f in status.failures), status.failures
        assert "no disk for me" in status.failure_log
        assert "setup failed on t-setup-0001" in status.failure_log
        # the cluster is usable, and its nodes ran the setup before joining
        results = cluster.exec('test -e "$AZMANAGERS_INSTANCE_DIR/ready" && echo ready')
        assert [r.stdout for r in results] == ["ready\n", "ready\n"]
    finally:
        stop_cluster(name)


def test_a_wait_that_runs_out_says_how_many_joined_with_a_boot_log(azm_home: Path) -> None:
    name = "t-slowsetup"
    try:
        with pytest.raises(WaitTimeoutError) as caught:
            azmanagers.start_cluster(
                name, nodes=1, setup="echo preparing-the-node\nsleep 60\n", wait=True, timeout=6
            )
        text = str(caught.value)
        assert "0 of 1 nodes joined within 6 s" in text
        assert "t-slowsetup-0000" in text and "preparing-the-node" in text
        # the cluster goes on: it is up, its node still setting up
        assert azmanagers.named_cluster(name).record.status == "up"
    finally:
        stop_cluster(name)
