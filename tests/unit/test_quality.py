"""The package's public surface and its static checks (ruff, mypy) are part of the suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import azmanagers

ROOT = Path(__file__).resolve().parents[2]


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert azmanagers.__all__ == sorted(azmanagers.__all__)
    assert len(set(azmanagers.__all__)) == len(azmanagers.__all__)
    for name in azmanagers.__all__:
        assert getattr(azmanagers, name) is not None, name


def test_the_issue_api_is_public() -> None:
    wanted = {
        "AzCluster",
        "addprocs",
        "build_nictemplate",
        "build_sstemplate",
        "build_vmtemplate",
        "nworkers",
        "nworkers_provisioned",
        "rmprocs",
        "save_template_nic",
        "save_template_scaleset",
        "save_template_vm",
        "workers",
        "write_manifest",
    }
    assert wanted <= set(azmanagers.__all__)


def test_every_error_derives_from_the_root() -> None:
    from azmanagers import errors

    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, errors.AzManagersError)


def _tool(name: str) -> list[str]:
    if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return [sys.executable, "-m", name]


def test_ruff_lint_and_format_are_clean() -> None:
    ruff = _tool("ruff")
    for args in (
        ["check", "src", "tests", "bench"],
        ["format", "--check", "src", "tests", "bench"],
    ):
        result = subprocess.run(ruff + args, cwd=ROOT, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
