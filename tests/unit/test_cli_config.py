"""Tests of ``azm manifest`` and ``azm template`` through ``azmanagers.cli.main``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from azmanagers.cli import main
from azmanagers.config.manifest import load_manifest
from azmanagers.config.templates import (
    LOCAL_TEMPLATE_DEFAULTS,
    load_template_nic,
    load_template_scaleset,
    load_template_vm,
    stored_template_names,
)

SUB = "12345678-abcd-4ef0-9876-0123456789ab"
AZURE_SS = [
    "--location",
    "westus2",
    "--vnet",
    "v",
    "--subnet",
    "s",
    "--imagegallery",
    "g",
    "--imagename",
    "img",
    "--skuname",
    "Standard_D2s_v3",
]


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "azhome"
    monkeypatch.setenv("AZMANAGERS_HOME", str(home))
    return home


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    return lines[0]


def _write_manifest() -> None:
    code = main(
        ["manifest", "write", "--resourcegroup", "rg", "--subscriptionid", SUB, "--ssh-user", "me"]
    )
    assert code == 0


def test_manifest_write_and_show(capsys: pytest.CaptureFixture[str], _home: Path) -> None:
    _write_manifest()
    out = capsys.readouterr().out
    assert str(_home / "manifest.json") in out
    assert load_manifest().ssh_user == "me"
    assert main(["manifest", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["subscriptionid"] == SUB
    assert shown["ssh_public_key_file"] == "~/.ssh/azmanagers_rsa.pub"


def test_manifest_write_key_files() -> None:
    code = main(
        [
            "manifest",
            "write",
            "--resourcegroup",
            "rg",
            "--subscriptionid",
            SUB,
            "--ssh-user",
            "me",
            "--ssh-private-key-file",
            "/k/id",
            "--ssh-public-key-file",
            "/k/id.pub",
        ]
    )
    assert code == 0
    assert load_manifest().ssh_private_key_file == "/k/id"
    assert load_manifest().ssh_public_key_file == "/k/id.pub"


def test_manifest_show_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifest", "show"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "azm manifest write" in line


def test_manifest_write_bad_subscription(capsys: pytest.CaptureFixture[str], _home: Path) -> None:
    code = main(
        ["manifest", "write", "--resourcegroup", "rg", "--subscriptionid", "x", "--ssh-user", "u"]
    )
    assert code == 2
    assert "GUID" in _one_error_line(capsys.readouterr().err)
    assert not (_home / "manifest.json").exists()


def test_manifest_write_missing_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["manifest", "write", "--resourcegroup", "rg", "--subscriptionid", SUB]) == 2
    assert "--ssh-user" in _one_error_line(capsys.readouterr().err)


def test_add_scaleset_uses_manifest_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    _write_manifest()
    capsys.readouterr()
    args = ["template", "add-scaleset", "big", *AZURE_SS, "--datadisk", "512:UltraSSD_LRS"]
    assert main([*args, "--tag", "team=geo", "--osdisksize", "100"]) == 0
    assert "templates_scaleset.json" in capsys.readouterr().out
    template = load_template_scaleset("big")
    assert template["subscriptionid"] == SUB
    assert template["resourcegroup"] == "rg"
    profile = template["value"]["properties"]["virtualMachineProfile"]
    assert profile["osProfile"]["adminUsername"] == "me"
    assert profile["storageProfile"]["osDisk"]["diskSizeGB"] == 100
    disk = profile["storageProfile"]["dataDisks"][0]
    assert disk["diskSizeGB"] == 512
    assert disk["managedDisk"]["storageAccountType"] == "UltraSSD_LRS"
    assert disk["lun"] == 1
    assert template["value"]["tags"] == {"team": "geo"}
    assert main(args) == 0
    assert "replaced" in capsys.readouterr().out


def test_add_scaleset_without_manifest_needs_subscription(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["template", "add-scaleset", "big", *AZURE_SS]) == 2
    assert "--subscriptionid" in _one_error_line(capsys.readouterr().err)
    args = ["--subscriptionid", SUB, "--resourcegroup", "rg", "--admin-username", "u"]
    assert main(["template", "add-scaleset", "big", *AZURE_SS, *args]) == 0


def test_add_scaleset_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    _write_manifest()
    capsys.readouterr()
    assert main(["template", "add-scaleset", "bad name", *AZURE_SS]) == 2
    assert "letters, digits" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "add-scaleset", "x", *AZURE_SS, "--osdisksize", "0"]) == 2
    assert "osdisksize" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "add-scaleset", "x", *AZURE_SS, "--tag", "novalue"]) == 2
    assert "KEY=VALUE" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "add-scaleset", "x", *AZURE_SS, "--datadisk", "big"]) == 2
    assert "SIZE_GB" in _one_error_line(capsys.readouterr().err)
    assert stored_template_names("scaleset") == []


def test_add_local_scaleset(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["template", "add-scaleset", "mine", "--local", "--max-instances", "4"]
    assert main([*args, "--memory-limit", "1000000", "--join-timeout-s", "9.5"]) == 0
    assert "mine" in capsys.readouterr().out
    assert load_template_scaleset("mine") == {
        **LOCAL_TEMPLATE_DEFAULTS,
        "max_instances": 4,
        "memory_limit": 1000000,
        "join_timeout_s": 9.5,
    }
    assert main(["template", "add-scaleset", "m2", "--local", "--max-instances", "999"]) == 2
    assert "max_instances" in _one_error_line(capsys.readouterr().err)


def test_local_and_azure_options_do_not_mix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "add-scaleset", "x", "--local", "--skuname", "S"]) == 2
    assert "--skuname" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "add-scaleset", "x", *AZURE_SS, "--nthreads", "2"]) == 2
    assert "--nthreads" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "add-vm", "x", "--local", "--vmsize", "S"]) == 2
    assert "--vmsize" in _one_error_line(capsys.readouterr().err)


def test_add_vm_and_nic(capsys: pytest.CaptureFixture[str]) -> None:
    _write_manifest()
    vm_args = ["--location", "w", "--imagegallery", "g", "--imagename", "i", "--vmsize", "S"]
    assert main(["template", "add-vm", "v1", *vm_args, "--nicname", "n9"]) == 0
    nic_id = load_template_vm("v1")["value"]["properties"]["networkProfile"]["networkInterfaces"][
        0
    ]["id"]
    assert nic_id == (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/n9"
    )
    assert main(["template", "add-vm", "here", "--local"]) == 0
    assert load_template_vm("here") == {"provider": "local"}
    nic_args = ["--vnet", "v", "--subnet", "s", "--location", "w", "--no-accelerated"]
    assert main(["template", "add-nic", "n1", *nic_args]) == 0
    nic = load_template_nic("n1")
    assert nic["properties"]["enableAcceleratedNetworking"] is False
    assert "templates_nic.json" in capsys.readouterr().out
    assert main(["template", "add-nic", "n2", "--vnet", "v", "--location", "w"]) == 2
    assert "--subnet" in _one_error_line(capsys.readouterr().err)


def test_list_show_remove(capsys: pytest.CaptureFixture[str]) -> None:
    _write_manifest()
    assert main(["template", "add-scaleset", "big", *AZURE_SS]) == 0
    assert main(["template", "add-scaleset", "tiny", "--local"]) == 0
    capsys.readouterr()
    assert main(["template", "list"]) == 0
    out = capsys.readouterr().out
    for word in ("big", "tiny", "local", "built-in", "westus2", "Standard_D2s_v3", "vm"):
        assert word in out
    assert main(["template", "list", "--kind", "nic"]) == 0
    out = capsys.readouterr().out
    assert "big" not in out
    assert main(["template", "show", "big"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["value"]["sku"]["name"] == "Standard_D2s_v3"
    assert main(["template", "show", "local", "--kind", "vm"]) == 0
    assert json.loads(capsys.readouterr().out) == {"provider": "local"}
    assert main(["template", "remove", "big"]) == 0
    assert "Removed" in capsys.readouterr().out
    assert stored_template_names("scaleset") == ["tiny"]


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "show", "nope"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'nope'" in line and "local" in line and "add-scaleset" in line
    assert main(["template", "list", "--kind", "disks"]) == 2
    assert "scaleset, vm, nic" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "remove", "local"]) == 2
    assert "built in" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "remove", "nope", "--kind", "nic"]) == 2
    _one_error_line(capsys.readouterr().err)


def test_corrupt_template_file(capsys: pytest.CaptureFixture[str], _home: Path) -> None:
    _home.mkdir()
    path = _home / "templates_scaleset.json"
    path.write_text("{oops")
    assert main(["template", "add-scaleset", "x", "--local"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(path) in line
    assert path.read_text() == "{oops"
    assert main(["template", "list"]) == 2
    _one_error_line(capsys.readouterr().err)


def test_unwritable_home(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("AZMANAGERS_HOME", str(blocker / "home"))
    args = ["manifest", "write", "--resourcegroup", "rg", "--subscriptionid", SUB]
    assert main([*args, "--ssh-user", "u"]) == 2
    assert "AZMANAGERS_HOME" in _one_error_line(capsys.readouterr().err)
    assert main(["template", "add-scaleset", "x", "--local"]) == 2
    _one_error_line(capsys.readouterr().err)
    assert blocker.read_text() == "x"


@pytest.mark.parametrize(
    "command",
    [
        ["manifest"],
        ["manifest", "write"],
        ["manifest", "show"],
        ["template"],
        ["template", "list"],
        ["template", "show"],
        ["template", "add-scaleset"],
        ["template", "add-vm"],
        ["template", "add-nic"],
        ["template", "remove"],
    ],
)
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out


def test_gc_json_lists_what_it_found_and_what_it_could_not_read(
    capsys: pytest.CaptureFixture[str], _home: Path
) -> None:
    capsys.readouterr()
    assert main(["gc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "collected": [],
        "dry_run": False,
        "not_collected": [],
    }
    _home.mkdir(exist_ok=True)
    broken = _home / "templates_scaleset.json"
    broken.write_text('{"a": ')
    # Before the fix: "Error: ... is not valid JSON" and nothing else was looked at.
    assert main(["gc", "--dry-run", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["collected"] == []
    [problem] = report["not_collected"]
    assert problem["file"] == str(broken) and "not valid JSON" in problem["error"]
    assert main(["gc"]) == 1
    captured = capsys.readouterr()
    assert "nothing to collect" not in captured.out  # something was not collected
    assert f"not collected: scale-set templates ({broken})" in captured.err


def _unusable_folder(case: str, tmp_path: Path) -> Path:
    """Return a --folder path that cannot be used, of the kind ``case``."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    if case == "a file":
        return a_file
    if case == "under a file":
        return a_file / "emulator"
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked / "emulator"
    # root may write anywhere permissions allow; /sys refuses new folders even to root
    refused = Path("/sys/azm-emulator-test")
    try:
        refused.mkdir()
    except PermissionError:
        return refused
    refused.rmdir()
    pytest.skip("no folder refuses root here")


@pytest.mark.parametrize("case", ["a file", "under a file", "no permission"])
def test_emulator_serve_at_an_unusable_folder_says_which_and_what_to_do(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _unusable_folder(case, tmp_path)
    capsys.readouterr()
    # Before the fix: "Error: FileExistsError: ..." or "Error: NotADirectoryError: ...".
    assert main(["emulator", "serve", "--folder", str(folder)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(folder) in line and "--folder" in line
    assert "Error: " in line and "Error: FileNotFoundError" not in line
    assert not any(name in line for name in ("FileExistsError", "NotADirectoryError", "errno"))
    assert "leave --folder out" in line


def test_template_list_show_and_manifest_show_take_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _write_manifest()
    assert main(["template", "add-scaleset", "big", *AZURE_SS]) == 0
    assert main(["template", "add-scaleset", "tiny", "--local", "--nthreads", "2"]) == 0
    capsys.readouterr()
    assert main(["template", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {(row["kind"], row["name"]): row for row in rows}
    assert set(by_name) == {
        ("scaleset", "big"),
        ("scaleset", "tiny"),
        ("scaleset", "local"),
        ("vm", "local"),
    }
    assert by_name[("scaleset", "big")]["provider"] == "azure"
    assert by_name[("scaleset", "big")]["summary"] == "westus2, Standard_D2s_v3"
    assert by_name[("scaleset", "tiny")]["source"] == "file"
    assert by_name[("scaleset", "local")]["source"] == "built-in"
    assert main(["template", "list", "--kind", "vm", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == ["local"]
    assert main(["template", "show", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {**LOCAL_TEMPLATE_DEFAULTS, "nthreads": 2}
    assert main(["manifest", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["subscriptionid"] == SUB and shown["ssh_user"] == "me"


def test_add_scaleset_refuses_a_name_too_long_for_azure(
    capsys: pytest.CaptureFixture[str], _home: Path
) -> None:
    from azmanagers.config.template_schema import MAX_TEMPLATE_NAME_CHARS

    limit = MAX_TEMPLATE_NAME_CHARS["scaleset"]
    capsys.readouterr()
    assert main(["template", "add-scaleset", "n" * (limit + 1), "--local"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"at most {limit} characters" in line and "shorter name" in line
    assert not (_home / "templates_scaleset.json").exists()
    assert main(["template", "add-scaleset", "n" * limit, "--local"]) == 0
