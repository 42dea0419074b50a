"""Tests of ``customenv``: the caller's pins, requirement files and lists, and their errors."""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from azmanagers.cluster.customenv import caller_requirements, requirements_for
from azmanagers.errors import ConfigError

PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+$")


def fake_dist(site: Path, name: str, version: str, direct_url: object | None = None) -> None:
    """Write a minimal ``.dist-info`` for ``name`` into ``site`` (a folder on sys.path)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if direct_url is not None:
        text = direct_url if isinstance(direct_url, str) else json.dumps(direct_url)
        (info / "direct_url.json").write_text(text)


def pins_of(text: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in text.splitlines())


@pytest.mark.parametrize("value", [False, None])
def test_no_custom_env(value: object) -> None:
    assert requirements_for(value) is None


def test_true_gives_name_version_lines_of_the_caller() -> None:
    text = requirements_for(True)
    assert text is not None
    assert text == caller_requirements()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines, "the test environment has installed distributions"
    for line in lines:
        assert PIN.match(line), line
    names = [line.split("==", 1)[0].lower() for line in lines]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    pins = {k.lower(): v for k, v in pins_of(text).items()}
    assert pins["pytest"] == metadata.version("pytest")
    assert "azmanagers" not in pins
    for tool in ("pip", "setuptools", "wheel"):
        assert tool not in pins


def test_local_and_editable_installs_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    fake_dist(site, "azm-fake-plain", "1.2.3")
    fake_dist(
        site, "azm-fake-remote", "2.0", {"url": "https://example.invalid/x.whl", "archive_info": {}}
    )
    fake_dist(
        site,
        "azm-fake-vcs",
        "3.0",
        {"url": "https://example.invalid/r.git", "vcs_info": {"vcs": "git"}},
    )
    fake_dist(
        site, "azm-fake-editable", "0.1", {"url": "file:///src/x", "dir_info": {"editable": True}}
    )
    fake_dist(site, "azm-fake-localdir", "0.2", {"url": "file:///src/y", "dir_info": {}})
    fake_dist(site, "azm-fake-localwheel", "0.3", {"url": "file:///tmp/z.whl", "archive_info": {}})
    fake_dist(site, "azm-fake-corrupt", "0.4", "{not json")
    monkeypatch.syspath_prepend(str(site))
    pins = pins_of(caller_requirements())
    assert pins["azm-fake-plain"] == "1.2.3"
    assert pins["azm-fake-remote"] == "2.0"
    assert pins["azm-fake-vcs"] == "3.0"
    for left_out in ("editable", "localdir", "localwheel", "corrupt"):
        assert f"azm-fake-{left_out}" not in pins


def test_azmanagers_is_left_out_even_when_installed_normally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    fake_dist(site, "AzManagers", "9.9.9")
    monkeypatch.syspath_prepend(str(site))
    assert "azmanagers" not in {k.lower() for k in pins_of(caller_requirements())}


def test_the_importable_version_is_pinned_when_a_distribution_is_shadowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    fake_dist(first, "azm-fake-shadow", "1.0")
    fake_dist(later, "azm-fake-shadow", "2.0")
    monkeypatch.syspath_prepend(str(first))
    monkeypatch.setattr(sys, "path", [*sys.path, str(later)])
    assert metadata.version("azm-fake-shadow") == "1.0"
    assert pins_of(caller_requirements())["azm-fake-shadow"] == "1.0"


@pytest.mark.parametrize("as_path", [True, False])
def test_a_requirements_file(tmp_path: Path, as_path: bool) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("numpy==1.26.4\n# comment\npandas>=2\n")
    arg: object = path if as_path else str(path)
    assert requirements_for(arg) == "numpy==1.26.4\n# comment\npandas>=2\n"


def test_a_requirements_file_gets_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "req.txt"
    path.write_text("numpy==1.26.4")
    assert requirements_for(path) == "numpy==1.26.4\n"


def test_a_requirements_path_with_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "req.txt").write_text("rich\n")
    assert requirements_for("~/req.txt") == "rich\n"


@pytest.mark.parametrize("kind", [list, tuple])
def test_a_list_of_requirements(kind: type) -> None:
    assert requirements_for(kind(["numpy==1.26.4", "rich>=13"])) == "numpy==1.26.4\nrich>=13\n"


def test_a_missing_file_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError) as info:
        requirements_for(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "No such file" in message
    assert "requirements" in message
    assert isinstance(info.value.__cause__, OSError)


def test_a_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        requirements_for(tmp_path)


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_an_empty_file_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content)
    with pytest.raises(ConfigError, match="is empty") as info:
        requirements_for(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("value", [[], ()])
def test_an_empty_list_raises(value: object) -> None:
    with pytest.raises(ConfigError, match="no requirements"):
        requirements_for(value)


@pytest.mark.parametrize(
    "value", [3, 1.5, {"numpy": "1.26"}, ["numpy", 2], [None], b"numpy", {"numpy"}]
)
def test_wrong_type_raises(value: object) -> None:
    with pytest.raises(ConfigError, match="customenv must be True, False"):
        requirements_for(value)
