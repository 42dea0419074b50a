"""Detached VM records under stress: duplicate names, copies, bad files, interrupted creates."""

from __future__ import annotations

import json
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import azmanagers
from azmanagers.detached import vms
from azmanagers.detached.vms import DetachedVM, load_vm, records_dir, save_vm
from azmanagers.errors import ConfigError
from azmanagers.tls import fingerprint, make_self_signed

pytestmark = pytest.mark.integration
DEADLINE_S = 60.0


def _fake_record(name: str, **changes: object) -> DetachedVM:
    """A record of a VM that is not there (its port is closed): no provider is needed."""
    pair = make_self_signed(f"azmanagers detached {name}")
    vm = DetachedVM(
        name=name,
        template="local",
        provider="local",
        host="127.0.0.1",
        port=9,
        cert=pair.cert,
        fingerprint=fingerprint(pair.cert),
        token=f"token-of-{name}",
        created_at=1764000000.0,
        status="up",
    )
    return save_vm(replace(vm, **changes))  # type: ignore[arg-type]


def test_two_creates_of_one_name_leave_the_winner_recorded(
    azm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = vms.make_self_signed
    loser_waits, winner_done = threading.Event(), threading.Event()

    def slow_for_the_loser(common_name: str):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "loser":  # past the exists check: a slow machine
            loser_waits.set()
            assert winner_done.wait(DEADLINE_S)
        return real(common_name)

    monkeypatch.setattr(vms, "make_self_signed", slow_for_the_loser)
    outcome: dict[str, BaseException] = {}

    def lose() -> None:
        try:
            vms.create_vm("local", name="dup")
        except Exception as exc:
            outcome["error"] = exc

    loser = threading.Thread(target=lose, name="loser")
    loser.start()
    try:
        assert loser_waits.wait(DEADLINE_S)
        winner = azmanagers.addproc("local", name="dup")
        winner_done.set()
        loser.join(DEADLINE_S)
        error = outcome.get("error")
        assert isinstance(error, ConfigError) and "exists already" in str(error), error
        kept = load_vm("dup")
        assert kept.token == winner.token and kept.status == "up" and kept.ping()
        local = azm_home / "state" / "local"
        for folder in (local, local / "vms", local / "vms" / "dup"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    finally:
        winner_done.set()
        loser.join(DEADLINE_S)
        azmanagers.rmproc("dup")


def test_a_copied_record_deletes_nothing(
    azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    victim = _fake_record("victim")
    copy = records_dir() / "victim-backup.json"
    copy.write_text((records_dir() / "victim.json").read_text())
    copy.chmod(0o600)
    assert main(["vm", "delete", "victim-backup"]) == 2
    assert "victim-backup.json" in capsys.readouterr().err
    assert load_vm("victim") == victim


def test_one_bad_record_does_not_hide_the_others(
    azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    _fake_record("good")
    (records_dir() / "broken.json").write_text("{not json")
    capsys.readouterr()
    assert main(["vm", "list"]) == 1
    out, err = capsys.readouterr()
    assert "good" in out and "down" in out and "broken" not in out
    assert "broken.json" in err and "not JSON" in err
    assert main(["vm", "list", "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert [(v["name"], v["state"]) for v in listed["vms"]] == [("good", "down")]
    assert [Path(p["file"]).name for p in listed["problems"]] == ["broken.json"]
    assert "token-of-good" not in json.dumps(listed)
    (records_dir() / "broken.json").unlink()
    assert main(["vm", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_a_record_whose_vm_is_not_made_yet_shows_no_address(
    azm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    _fake_record("halfway", host="", port=40589, status="creating")  # its caller was killed
    capsys.readouterr()
    assert main(["vm", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("halfway"))
    assert ":40589" not in line and line.split()[2] == "-"
    assert line.split()[3] == "gone"  # the provider has no such VM: rmproc forgets it
    azmanagers.rmproc("halfway")
    assert not (records_dir() / "halfway.json").exists()


def test_a_create_interrupted_while_the_vm_boots_keeps_a_true_record(
    azm_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while waiting for the service

    half_made = azm_home / "state" / "local" / "vms" / "interrupted"
    half_made.mkdir(parents=True)  # what a create killed before it wrote vm.json left
    (half_made / "boot.log").write_text("from a killed create\n")
    try:
        with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
            patched.setattr(vms, "_wait_ready", interrupted)
            azmanagers.addproc("local", name="interrupted")
        assert load_vm("interrupted").status == "booting"  # the VM runs: not "failed"
        vm = load_vm("interrupted")
        deadline = DEADLINE_S
        while not vm.ping():  # it answers once booted
            deadline -= 0.2
            assert deadline > 0, "the VM never answered"
            threading.Event().wait(0.2)
        capsys.readouterr()
        assert main(["vm", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)["vms"]
        assert [(v["name"], v["state"], v["status"]) for v in listed] == [
            ("interrupted", "up", "up")
        ]
        assert load_vm("interrupted").status == "up"  # the listing recorded what it saw
    finally:
        azmanagers.rmproc("interrupted")


def test_a_create_interrupted_inside_the_provider_leaves_no_half_made_vm(
    azm_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from azmanagers.cli import main
    from azmanagers.providers.local import vms as local_vms

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the process-VM started, before its record

    monkeypatch.setattr(local_vms, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        azmanagers.addproc("local", name="cut")
    assert not (azm_home / "state" / "local" / "vms" / "cut").exists()
    assert load_vm("cut").status == "creating"  # kept: the provider might have made it
    capsys.readouterr()
    assert main(["vm", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2:4] == ["-", "gone"]
    azmanagers.rmproc("cut")
    assert not (records_dir() / "cut.json").exists()
