"""Named cluster records: the name rule, a round trip through the state store, secrets kept
out of reprs and the file 0600."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from azmanagers.errors import ConfigError
from azmanagers.state.clusters import CLUSTERS, ClusterRecord, check_cluster_name
from azmanagers.state.records import RecordStore


@pytest.mark.parametrize("name", ["abc", "study-2026", "a" * 40, "x1-y2"])
def test_good_cluster_names(name: str) -> None:
    assert check_cluster_name(name) == name


@pytest.mark.parametrize(
    "name", ["ab", "a" * 41, "Study", "-abc", "abc-", "a_b", "a.b", "ab c", "", None, 12]
)
def test_bad_cluster_names_say_the_rule(name: object) -> None:
    with pytest.raises(ConfigError, match="3 to 40 lower-case letters"):
        check_cluster_name(name)


@given(st.text(max_size=50))
def test_a_name_that_passes_fits_a_vm_and_a_file(name: str) -> None:
    try:
        check_cluster_name(name)
    except ConfigError:
        return
    assert 3 <= len(name) <= 40 and name == name.lower() and name.isascii()
    assert not name.startswith("-") and not name.endswith("-")


def test_a_record_round_trips_0600_without_secrets_in_its_repr(tmp_path: Path) -> None:
    store = RecordStore(CLUSTERS, ClusterRecord, root=tmp_path)
    record = ClusterRecord(
        name="study",
        template="local",
        head_template="local",
        provider="local",
        pool="azm-study",
        head="study-head",
        nodes=4,
        token="tok-secret",
        client_key="-----BEGIN PRIVATE KEY-----secret",
    )
    assert store.create(record) is not None
    assert store.create(record) is None  # a name in use is not taken twice
    path = store.path("study")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = store.load("study")
    assert loaded is not None and replace(loaded, updated_at=0.0) == replace(record, updated_at=0.0)
    assert "secret" not in repr(loaded)
    store.save(replace(loaded, status="up", scheduler="tls://127.0.0.1:1"))
    again = store.load("study")
    assert again is not None and again.status == "up"
