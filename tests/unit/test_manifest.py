"""Tests of the manifest: write, load, validation, and what happens on bad files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from azmanagers.config.manifest import (
    Manifest,
    load_manifest,
    manifest_path,
    write_manifest,
)
from azmanagers.errors import ConfigError

SUBSCRIPTION = "12345678-abcd-4ef0-9876-0123456789ab"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "azhome"
    monkeypatch.setenv("AZMANAGERS_HOME", str(home))
    return home


def _write_default() -> Path:
    return write_manifest(resourcegroup="my-rg", subscriptionid=SUBSCRIPTION, ssh_user="cvx")


def test_round_trip_keys_and_mode() -> None:
    path = _write_default()
    assert path == manifest_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored == {
        "resourcegroup": "my-rg",
        "subscriptionid": SUBSCRIPTION,
        "ssh_user": "cvx",
        "ssh_private_key_file": "~/.ssh/azmanagers_rsa",
        "ssh_public_key_file": "~/.ssh/azmanagers_rsa.pub",
    }
    loaded = load_manifest()
    assert loaded == Manifest(
        resourcegroup="my-rg",
        subscriptionid=SUBSCRIPTION,
        ssh_user="cvx",
        ssh_private_key_file="~/.ssh/azmanagers_rsa",
        ssh_public_key_file="~/.ssh/azmanagers_rsa.pub",
    )
    assert loaded.to_dict() == stored
    assert loaded.public_key_path() == Path("~/.ssh/azmanagers_rsa.pub").expanduser()


def test_manifest_is_frozen() -> None:
    _write_default()
    loaded = load_manifest()
    with pytest.raises(AttributeError):
        loaded.ssh_user = "other"  # type: ignore[misc]


def test_custom_key_files_and_rewrite() -> None:
    _write_default()
    write_manifest(
        resourcegroup="rg2",
        subscriptionid=SUBSCRIPTION.upper(),
        ssh_user="u",
        ssh_private_key_file="/keys/id",
        ssh_public_key_file="/keys/id.pub",
    )
    loaded = load_manifest()
    assert loaded.resourcegroup == "rg2"
    assert loaded.ssh_private_key_file == "/keys/id"
    assert loaded.ssh_public_key_file == "/keys/id.pub"


def test_missing_manifest_says_how_to_write_one(_home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_manifest()
    message = str(info.value)
    assert str(_home / "manifest.json") in message
    assert "azmanagers.write_manifest(" in message
    assert "azm manifest write --resourcegroup" in message
    assert "--subscriptionid" in message and "--ssh-user" in message


def test_corrupt_manifest_names_file_and_is_not_overwritten_by_bad_write() -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    with pytest.raises(ConfigError) as info:
        load_manifest()
    assert str(path) in str(info.value)
    assert "not valid JSON" in str(info.value)
    with pytest.raises(ConfigError):
        write_manifest(resourcegroup="rg", subscriptionid="nope", ssh_user="u")
    assert path.read_text() == "{ not json"


def test_missing_key_names_file_and_key() -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"resourcegroup": "rg", "subscriptionid": SUBSCRIPTION}))
    with pytest.raises(ConfigError) as info:
        load_manifest()
    assert str(path) in str(info.value)
    assert "'ssh_user'" in str(info.value)
    assert "missing" in str(info.value)


def test_ill_typed_key_names_file_and_key() -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True)
    data = {"resourcegroup": 7, "subscriptionid": SUBSCRIPTION, "ssh_user": "u"}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_manifest()
    assert str(path) in str(info.value)
    assert "'resourcegroup'" in str(info.value)


def test_manifest_not_an_object() -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_manifest()


def test_missing_key_files_take_defaults() -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True)
    data = {"resourcegroup": "rg", "subscriptionid": SUBSCRIPTION, "ssh_user": "u"}
    path.write_text(json.dumps(data))
    loaded = load_manifest()
    assert loaded.ssh_private_key_file == "~/.ssh/azmanagers_rsa"
    assert loaded.ssh_public_key_file == "~/.ssh/azmanagers_rsa.pub"


@pytest.mark.parametrize("bad", ["", "not-a-guid", "12345678-1234-1234-1234-12345678", 5])
def test_bad_subscription_id_writes_nothing(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        write_manifest(resourcegroup="rg", subscriptionid=bad, ssh_user="u")  # type: ignore[arg-type]
    assert "subscriptionid" in str(info.value)
    if isinstance(bad, str) and bad:
        assert "GUID" in str(info.value)
    assert not manifest_path().exists()


def test_bad_subscription_id_in_file() -> None:
    path = manifest_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"resourcegroup": "rg", "subscriptionid": "x", "ssh_user": "u"}))
    with pytest.raises(ConfigError, match="GUID") as info:
        load_manifest()
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key", ["resourcegroup", "ssh_user", "ssh_public_key_file"])
def test_empty_values_are_rejected(key: str) -> None:
    values = {"resourcegroup": "rg", "subscriptionid": SUBSCRIPTION, "ssh_user": "u", key: "  "}
    with pytest.raises(ConfigError) as info:
        write_manifest(**values)
    assert repr(key) in str(info.value)
    assert "nothing was written" in str(info.value)
    assert not manifest_path().exists()


def test_unwritable_home_gives_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("AZMANAGERS_HOME", str(blocker / "home"))
    with pytest.raises(ConfigError, match="AZMANAGERS_HOME"):
        _write_default()
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_failed_rewrite_keeps_old_manifest() -> None:
    _write_default()
    before = manifest_path().read_text()
    with pytest.raises(ConfigError):
        write_manifest(resourcegroup="", subscriptionid=SUBSCRIPTION, ssh_user="u")
    assert manifest_path().read_text() == before
    assert [p.name for p in manifest_path().parent.iterdir()] == ["manifest.json"]


def test_a_manifest_that_is_not_utf8_names_the_file() -> None:
    path = _write_default()
    path.write_bytes(path.read_bytes().replace(b"my-rg", b"my-r\xe9g"))
    # Before the fix: a bare UnicodeDecodeError without the file's name.
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_manifest()
    assert str(path) in str(info.value) and "Fix or remove" in str(info.value)


def test_a_subscription_id_with_a_trailing_newline_is_refused() -> None:
    # Before the fix GUID_RE.match accepted "<guid>\n" ($ matches before a final newline).
    with pytest.raises(ConfigError, match="GUID"):
        write_manifest(resourcegroup="rg", subscriptionid=SUBSCRIPTION + "\n", ssh_user="me")
    assert not manifest_path().exists()
    _write_default()
    data = json.loads(manifest_path().read_text())
    data["subscriptionid"] = SUBSCRIPTION + "\n"
    manifest_path().write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="GUID"):
        load_manifest()
