"""The state store: typed records in versioned JSON, atomic, 0600, readable elsewhere."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import azmanagers
from azmanagers.detached.vms import DetachedVM, check_vm_name, list_vm_names, load_vm, save_vm
from azmanagers.errors import ConfigError
from azmanagers.state.records import Kind, RecordStore
from azmanagers.state.vms import DETACHED_VMS


@dataclass(frozen=True)
class Sweep:
    """A stand-in for a next kind of record (a sweep)."""

    name: str
    runs: int
    storage: str | None = None
    status: str = "pending"
    updated_at: float = 0.0


def _upgrade_0(data: dict[str, object]) -> dict[str, object]:
    data["runs"] = int(str(data.pop("count")))
    data.setdefault("status", "pending")
    return data


SWEEPS = Kind("sweeps", 1, ("pending", "running", "done"), {0: _upgrade_0}, "sweep")


def test_a_record_round_trips_as_versioned_json_with_mode_0600(azm_home: Path) -> None:
    store = RecordStore(SWEEPS, Sweep)
    written = store.save(Sweep("nightly", 12, storage="file:///data"))
    assert written.updated_at > 0
    path = azm_home / "state" / "sweeps" / "nightly.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())  # JSON text, never a pickle
    assert data["kind"] == "sweeps" and data["schema_version"] == 1
    assert data["status"] == "pending" and data["runs"] == 12
    assert store.load("nightly") == written
    assert store.names() == ["nightly"]
    assert store.load("other") is None
    store.save(replace(written, status="done"))
    assert store.load("nightly").status == "done"  # type: ignore[union-attr]
    assert [p.name for p in path.parent.iterdir()] == ["nightly.json"]  # no temporary left
    store.delete("nightly")
    assert store.names() == []


def test_another_process_reads_what_this_one_wrote(azm_home: Path) -> None:
    store = RecordStore(SWEEPS, Sweep)
    store.save(Sweep("shared", 3))
    script = (
        "from tests.unit.test_state import SWEEPS, Sweep\n"
        "from azmanagers.state.records import RecordStore\n"
        "print(RecordStore(SWEEPS, Sweep).load('shared').runs)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "AZMANAGERS_HOME": str(azm_home)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "3", out.stderr


def test_an_older_schema_is_upgraded_and_a_newer_one_refused(azm_home: Path) -> None:
    store = RecordStore(SWEEPS, Sweep)
    folder = azm_home / "state" / "sweeps"
    folder.mkdir(parents=True)
    (folder / "old.json").write_text(json.dumps({"name": "old", "count": "7"}))
    assert store.load("old") == Sweep("old", 7)
    (folder / "new.json").write_text(
        json.dumps({"kind": "sweeps", "schema_version": 2, "name": "new", "runs": 1})
    )
    with pytest.raises(ConfigError, match=r"newer azmanagers \(schema 2.*reads up to 1"):
        store.load("new")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"kind": "clusters", "schema_version": 1, "name": "x", "runs": 1}', "kind is"),
        ('{"kind": "sweeps", "schema_version": 1, "name": "x", "runs": "1"}', "runs = '1'"),
        ('{"kind": "sweeps", "schema_version": 1, "name": "x"}', "missing fields.*runs"),
        ('{"kind": "sweeps", "schema_version": 1, "name": "x", "runs": 1, "z": 0}', "unknown"),
        ('{"kind": "sweeps", "schema_version": 1, "name": "x", "runs": 1, "status": "?"}', "st"),
    ],
)
def test_a_bad_record_names_its_file(azm_home: Path, content: str, message: str) -> None:
    folder = azm_home / "state" / "sweeps"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text(content)
    with pytest.raises(ConfigError, match=rf"x\.json.*{message}"):
        RecordStore(SWEEPS, Sweep).load("x")


@pytest.mark.parametrize("name", ["", "vm1\n", "../up", "a b", "-lead", "é", "x" * 65])
def test_a_record_name_must_name_a_file(azm_home: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid sweep name"):
        RecordStore(SWEEPS, Sweep).path(name)


def _legacy_vm_record(name: str) -> dict[str, object]:
    """What detached/vms.py of the released version wrote: asdict(DetachedVM), nothing else."""
    return {
        "name": name,
        "template": "local",
        "provider": "local",
        "host": "127.0.0.1",
        "port": 40123,
        "cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "fingerprint": "ab" * 32,
        "token": "tok-" + "x" * 40,
        "created_at": 1764000000.5,
    }


def test_a_vm_record_of_the_released_version_still_loads(azm_home: Path) -> None:
    folder = azm_home / "state" / "detached"
    folder.mkdir(parents=True)
    (folder / "oldvm.json").write_text(json.dumps(_legacy_vm_record("oldvm"), indent=1))
    vm = load_vm("oldvm")
    assert isinstance(vm, DetachedVM)
    assert (vm.host, vm.port, vm.token) == ("127.0.0.1", 40123, "tok-" + "x" * 40)
    assert vm.status == "up" and vm.updated_at == 1764000000.5
    assert list_vm_names() == ["oldvm"]
    assert vm.token not in repr(vm)
    rewritten = save_vm(replace(vm, status="deleting"))  # written back in the new schema
    data = json.loads((folder / "oldvm.json").read_text())
    assert data["schema_version"] == DETACHED_VMS.schema_version
    assert load_vm("oldvm") == rewritten


@pytest.mark.parametrize("name", ["x" * 44, "y" * 300, "vm1\n", "vm 1", "-vm", "vm/1", "vmé"])
def test_a_new_vm_name_that_would_not_fit_is_refused_where_it_is_given(
    azm_home: Path, name: str
) -> None:
    with pytest.raises(ConfigError, match="detached VM name"):
        check_vm_name(name)
    with pytest.raises(ConfigError, match="detached VM name"):
        azmanagers.addproc("local", name=name)
    assert list_vm_names() == []
    assert not (azm_home / "state" / "local" / "vms").exists()  # nothing was made
    assert check_vm_name("v" * 40) == "v" * 40


# -- breaker findings: a record is reserved whole, trusted only under its own name -----------


def test_a_name_is_reserved_once_and_only_its_own_record_is_deleted(azm_home: Path) -> None:
    store = RecordStore(SWEEPS, Sweep)
    first = store.create(Sweep("nightly", 1))
    assert first is not None and first.updated_at > 0
    assert store.create(Sweep("nightly", 2)) is None  # taken: the first record stays whole
    assert store.load("nightly") == first
    assert [p.name for p in store.folder.iterdir()] == ["nightly.json"]  # no temporary left
    store.delete("nightly", only=lambda found: found.runs == 2)  # not the one that call wrote
    assert store.load("nightly") == first
    store.delete("nightly", only=lambda found: found.runs == 1)
    assert store.load("nightly") is None


def test_a_copied_record_is_refused_by_the_name_of_its_file(azm_home: Path) -> None:
    store = RecordStore(SWEEPS, Sweep)
    store.save(Sweep("victim", 1))
    copy = store.folder / "victim-backup.json"
    copy.write_text(store.path("victim").read_text())
    copy.chmod(0o600)
    assert store.names() == ["victim", "victim-backup"]
    with pytest.raises(ConfigError, match=r"victim-backup\.json.*names 'victim'"):
        store.load("victim-backup")


def test_a_record_others_can_read_is_made_0600_with_a_warning(
    azm_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(SWEEPS, Sweep)
    written = store.save(Sweep("open", 1))
    store.path("open").chmod(0o644)
    with caplog.at_level("WARNING", logger="azmanagers.state"):
        assert store.load("open") == written
    assert stat.S_IMODE(store.path("open").stat().st_mode) == 0o600
    assert "open.json" in caplog.text and "0644" in caplog.text
