"""Config files that fight back: hostile JSON, concurrent saves, loose permissions, bad values."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import stat
from pathlib import Path

import pytest

from azmanagers.config import manifest, paths, templates
from azmanagers.errors import ConfigError

HOSTILE_JSON = {
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "huge integer": b'{"x": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_JSON))
def test_hostile_json_gives_a_config_error_naming_the_file(name: str, azm_home: Path) -> None:
    # Before: RecursionError, or ValueError "Exceeds the limit (4300 digits)", no file name.
    azm_home.mkdir()
    path = azm_home / "templates_scaleset.json"
    path.write_bytes(HOSTILE_JSON[name])
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        paths.read_json(path)
    with pytest.raises(ConfigError, match=r"templates_scaleset\.json"):
        templates.list_templates("scaleset")


def _save_five(worker: int) -> None:
    for i in range(5):
        templates.save_template_scaleset(f"w{worker}-t{i}", {"provider": "local"})


def test_concurrent_saves_keep_every_template(azm_home: Path) -> None:
    # Before: read-modify-write without a lock; 8 x 5 saves kept about a dozen.
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_save_five, args=(w,)) for w in range(8)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    expected = {f"w{w}-t{i}" for w in range(8) for i in range(5)}
    assert set(templates.stored_template_names("scaleset")) == expected
    removers = [
        context.Process(target=templates.remove_template, args=("scaleset", f"w{w}-t0"))
        for w in range(8)
    ]
    for proc in removers:
        proc.start()
    for proc in removers:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    left = {f"w{w}-t{i}" for w in range(8) for i in range(1, 5)}
    assert set(templates.stored_template_names("scaleset")) == left


GOOD_MANIFEST = {
    "resourcegroup": "my-rg_1.(x)",
    "subscriptionid": "00000000-0000-0000-0000-000000000000",
    "ssh_user": "azm_user-1",
}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("resourcegroup", "rg\n"),
        ("resourcegroup", "rg "),
        ("resourcegroup", "rg."),
        ("resourcegroup", "r" * 91),
        ("resourcegroup", "rg;x"),
        ("resourcegroup", "rg/x"),
        ("ssh_user", "u ser\n;x"),
        ("ssh_user", "user\n"),
        ("ssh_user", "1user"),
        ("ssh_user", "User"),
        ("ssh_user", "u" * 33),
        ("ssh_user", "us:er"),
    ],
)
def test_the_manifest_refuses_values_azure_or_linux_would_refuse(
    key: str, value: str, azm_home: Path
) -> None:
    # Before: accepted and written (e.g. "rg\n" and "u ser\n;x").
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        manifest.write_manifest(**{**GOOD_MANIFEST, key: value})
    assert not manifest.manifest_path().exists()
    azm_home.mkdir(exist_ok=True)
    manifest.manifest_path().write_text(json.dumps({**GOOD_MANIFEST, key: value}))
    with pytest.raises(ConfigError, match=f"manifest.json: key '{key}'"):
        manifest.load_manifest()


def test_the_manifest_takes_azure_and_linux_names(azm_home: Path) -> None:
    manifest.write_manifest(**GOOD_MANIFEST)
    assert manifest.load_manifest().resourcegroup == "my-rg_1.(x)"
    manifest.write_manifest(**{**GOOD_MANIFEST, "resourcegroup": "r" * 90, "ssh_user": "_u"})
    assert manifest.load_manifest().ssh_user == "_u"


@pytest.mark.parametrize("group", ["rg\n", "rg;x", "rg."])
def test_an_azure_template_refuses_a_bad_resource_group(group: str, azm_home: Path) -> None:
    from tests.unit.test_templates import _ss

    with pytest.raises(ConfigError, match=r"resourcegroup.*not a resource group name"):
        templates.save_template_scaleset("t", {**_ss(), "resourcegroup": group})
    assert not templates.templates_path("scaleset").exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_folder_made_for_azmanagers_home_is_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: mkdir(parents=True, mode=0o700) made the parents 0755 (only the last got 0700).
    there = tmp_path / "there"
    there.mkdir(mode=0o750)
    there.chmod(0o750)
    home = there / "a" / "b" / "home"
    monkeypatch.setenv("AZMANAGERS_HOME", str(home))
    old = os.umask(0o022)
    try:
        templates.save_template_scaleset("t", {"provider": "local"})
        made = paths.ensure_dir(paths.home() / "state" / "x" / "y")
    finally:
        os.umask(old)
    for folder in (there / "a", there / "a" / "b", home, home / "state", made.parent, made):
        assert _mode(folder) == 0o700, f"{folder} is {oct(_mode(folder))}"
    assert _mode(there) == 0o750  # a folder that was there is left as it was


def test_a_config_file_readable_by_others_is_made_0600_with_one_warning(
    azm_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a 0644 manifest or template file (they may hold secrets) was read as it was.
    manifest.write_manifest(**GOOD_MANIFEST)
    templates.save_template_scaleset("t", {"provider": "local"})
    for path in (manifest.manifest_path(), templates.templates_path("scaleset")):
        path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="azmanagers"):
        for _ in range(3):
            manifest.load_manifest()
            templates.list_templates("scaleset")
    assert _mode(manifest.manifest_path()) == 0o600
    assert _mode(templates.templates_path("scaleset")) == 0o600
    warned = [r.getMessage() for r in caplog.records if "0600" in r.getMessage()]
    assert len(warned) == 2, warned  # once per file
    assert str(manifest.manifest_path()) in warned[0] or str(manifest.manifest_path()) in warned[1]
