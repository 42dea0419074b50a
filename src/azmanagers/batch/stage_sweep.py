"""Staging a sweep's inputs, shared inputs, overlays and packages for a job, checked per run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from azmanagers.batch.packages import registered_source
from azmanagers.batch.runner import PackageRef
from azmanagers.batch.staging import InputRef, Stager
from azmanagers.batch.sweep import Sweep
from azmanagers.errors import ConfigError
from azmanagers.storage.base import Storage


def stage_sweep(
    space: Storage, root: Storage, prefix: str, sweep: Sweep, base: Path
) -> tuple[dict[str, InputRef], tuple[InputRef, ...], tuple[PackageRef, ...]]:
    """Stage every input into the job's ``space``; registered packages come from ``root``."""
    stager = Stager(space, prefix, base=base)
    model = sweep.model
    shared = tuple(stager.add(s) for s in model.shared)
    checked: set[tuple[str, ...]] = set()
    for run in sweep.runs():
        for source in run.inputs:
            stager.add(source)
        sources = (*run.inputs, *model.shared)
        if sources not in checked:  # runs of a sweep mostly share their inputs: check once
            check_places(run.run_id, sources, stager.placed)
            checked.add(sources)
        if run.overlay is not None and not stager.add(run.overlay, dest="").tree:
            raise ConfigError(
                f"overlay {run.overlay!r} is a file; an overlay is a folder whose contents are "
                "laid over the run folder."
            )
    packages = []
    for pkg in model.packages:
        source = (
            pkg.path if pkg.path is not None else registered_source(root, pkg.name, pkg.version)
        )
        ref = stager.add(source, dest="")
        stager.refs[f"package:{pkg.name}:{pkg.version}"] = ref
        packages.append(PackageRef(pkg.name, pkg.version, pkg.env_name, ref))
    stager.flush()
    return dict(stager.refs), shared, tuple(packages)


def check_places(
    run_id: str, sources: tuple[str, ...], placed: Mapping[str, tuple[str, ...]]
) -> None:
    """Refuse inputs of one run that put two files on one path, or a file where another
    input has a folder (overlays are exempt: laying files over the run folder is their job)."""
    files: dict[str, str] = {}
    folders: dict[str, str] = {}
    for source in sources:
        for path in placed[source]:
            parts = path.split("/")
            parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
            other = files.get(path) or folders.get(path)
            other = other or next((files[p] for p in parents if p in files), None)
            if other is not None and other != source:
                raise ConfigError(
                    f"inputs {other!r} and {source!r} of run {run_id} both land on {path!r} "
                    "in the run folder; rename one, or put them in folders of their own."
                )
            files[path] = source
            for p in parents:
                folders.setdefault(p, source)
