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


# -- the house's layout (DESIGN.md "Layout"): checked on the source, not by convention --------
PACKAGE = ROOT / "src" / "azmanagers"
MAX_MODULE_LINES = 420
DATA_TABLES = {"config/template_schema.py"}
"""Modules that are mostly data (the template schema) may be longer."""

LAYER = {
    "errors": 0,
    "_version": 0,
    "config": 1,
    "state": 1,
    "storage": 1,
    "providers": 1,
    "tls": 1,
    "cluster": 2,
    "detached": 2,
    "batch": 2,
    "named": 2,
    "cli": 3,
}
"""Arrows go down: a package imports only packages of a lower layer or its own."""

AGENT_MAY_IMPORT = {"errors", "_version", "agent", "tls", "config", "providers", "detached.wire"}
"""What runs on a VM needs only these (never cluster/, cli/, the caller's detached API)."""
AGENT_HEAD_MAY_IMPORT = AGENT_MAY_IMPORT | {"cluster", "named.wire"}
"""The head (agent/head*.py) runs a cluster: its scheduler, reconciler and node commands."""


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("azmanagers.")]


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_no_module_is_over_400_lines() -> None:
    long = [
        f"{p.relative_to(PACKAGE)}: {n} lines"
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
        and str(p.relative_to(PACKAGE)) not in DATA_TABLES
    ]
    assert not long, "split these modules:\n" + "\n".join(long)


def test_every_package_says_what_lives_there_and_what_it_may_import() -> None:
    vague = []
    for init in PACKAGE.rglob("__init__.py"):
        import ast

        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if "placeholder" in doc.lower() or "import" not in doc.lower():
            vague.append(str(init.relative_to(PACKAGE)))
    assert not vague, "these __init__ docstrings must say what lives there and may import:\n" + (
        "\n".join(sorted(vague))
    )


def test_nothing_outside_providers_imports_a_providers_own_module() -> None:
    private = (
        "azmanagers.providers.local",
        "azmanagers.providers.azure",
        "azmanagers.providers.procvm",
    )
    found = [
        f"{p.relative_to(PACKAGE)}:{line} imports {name}"
        for p in _modules()
        if _top(p) != "providers"
        for line, name in _imports(p)
        if name.startswith(private)
    ]
    assert not found, "use the registry in providers/__init__.py:\n" + "\n".join(found)


def test_arrows_go_down() -> None:
    upward = []
    for path in _modules():
        top = _top(path)
        for line, name in _imports(path):
            target = name.split(".")[1]
            where = f"{path.relative_to(PACKAGE)}:{line} imports {name}"
            if top == "agent":
                head = path.name in ("head.py", "head_routes.py", "head_exec.py")
                may = AGENT_HEAD_MAY_IMPORT if head else AGENT_MAY_IMPORT
                allowed = (f"azmanagers.{ok}" for ok in may)
                if not any(
                    a == name or name.startswith(a + ".") or a.startswith(name + ".")
                    for a in allowed
                ):
                    upward.append(where)
            elif top in LAYER and target in LAYER and LAYER[target] > LAYER[top]:
                upward.append(where)
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_the_old_module_paths_of_public_classes_still_import() -> None:
    from azmanagers.cluster import AzCluster
    from azmanagers.detached import DetachedJob, DetachedVM

    assert (AzCluster, DetachedJob, DetachedVM) == (
        azmanagers.AzCluster,
        azmanagers.DetachedJob,
        azmanagers.DetachedVM,
    )
