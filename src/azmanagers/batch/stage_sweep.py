"""Staging a sweep's inputs, shared inputs, overlays and packages for a job, checked per run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from azmanagers.batch.model import Model
from azmanagers.batch.multinode import MasterWorker, MpiModel
from azmanagers.batch.packages import registered_source
from azmanagers.batch.runner import PackageRef
from azmanagers.batch.staging import InputRef, Stager
from azmanagers.batch.sweep import Sweep
from azmanagers.errors import ConfigError
from azmanagers.storage.base import Storage


def stage_sweep(
    space: Storage, root: Storage, prefix: str, sweep: Sweep, base: Path
) -> tuple[dict[str, InputRef], tuple[InputRef, ...], tuple[PackageRef, ...]]:
    """Stage every input into the job's ``space``; registered packages come from ``root``.

    A ``MasterWorker``'s worker sweep (its inputs, shared inputs and packages) is staged into
    the same job; ``staged_parts(model.worker, refs)`` gives its shared inputs and packages.
    An ``MpiModel``'s coordination command is checked for every run.
    """
    stager = Stager(space, prefix, base=base)
    model = sweep.model
    _stage_runs(stager, sweep)
    if isinstance(model, MasterWorker):
        _stage_runs(stager, model.worker_sweep(sweep))
    models = (model, model.worker) if isinstance(model, MasterWorker) else (model,)
    for one in models:
        for pkg in one.packages:
            key = f"package:{pkg.name}:{pkg.version}"
            if key in stager.refs:
                continue
            source = (
                pkg.path if pkg.path is not None else registered_source(root, pkg.name, pkg.version)
            )
            stager.refs[key] = stager.add(source, dest="")
    stager.flush()
    refs = dict(stager.refs)
    shared, packages = staged_parts(model, refs)
    return refs, shared, packages


def staged_parts(
    model: Model, refs: Mapping[str, InputRef]
) -> tuple[tuple[InputRef, ...], tuple[PackageRef, ...]]:
    """A staged model's shared inputs and packages, from the job's refs (``stage_sweep``'s)."""
    shared = tuple(refs[s] for s in model.shared)
    packages = tuple(
        PackageRef(p.name, p.version, p.env_name, refs[f"package:{p.name}:{p.version}"])
        for p in model.packages
    )
    return shared, packages


def _stage_runs(stager: Stager, sweep: Sweep) -> None:
    model = sweep.model
    for source in model.shared:
        stager.add(source)
    places = SharedPlaces(tuple(model.shared), stager.placed)
    checked: set[tuple[str, ...]] = set()
    for run in sweep.runs():
        for source in run.inputs:
            stager.add(source)
        if run.inputs not in checked:  # runs of a sweep mostly share their inputs: check once
            places.check(run.run_id, run.inputs)
            checked.add(run.inputs)
        if run.overlay is not None and not stager.add(run.overlay, dest="").tree:
            raise ConfigError(
                f"overlay {run.overlay!r} is a file; an overlay is a folder whose contents are "
                "laid over the run folder."
            )
        if isinstance(model, MpiModel):
            model.coordination_for(run)  # a {NAME} it does not know fails here, not on a node


class SharedPlaces:
    """The shared inputs' places in the run folder, indexed once per sweep, to check each
    run's own inputs against them: O(shared files + runs x own files), not runs x shared files.

    ``check`` refuses exactly what ``check_places(run_id, (*inputs, *shared), placed)`` refuses,
    with the same message: when a run's own paths meet the index (or the shared inputs clash
    among themselves), that full check is run once to say which two inputs and where.
    """

    def __init__(self, shared: tuple[str, ...], placed: Mapping[str, tuple[str, ...]]) -> None:
        self.shared = shared
        self._placed = placed
        self._files: set[str] = set()
        self._folders: set[str] = set()
        for source in shared:
            for path in placed[source]:
                self._files.add(path)
                self._folders.update(_parents(path))
        self._clash = _first_clash(shared, placed) is not None

    def check(self, run_id: str, inputs: tuple[str, ...]) -> None:
        """Refuse ``inputs`` of run ``run_id`` that land on one another or on a shared input."""
        files: dict[str, str] = {}
        folders: dict[str, str] = {}
        if clash := _first_clash(inputs, self._placed, files, folders):
            raise _clash_error(run_id, *clash)
        meets = self._clash or any(f in self._files or f in self._folders for f in files)
        if meets or any(f in self._files for f in folders):
            check_places(run_id, (*inputs, *self.shared), self._placed)


def check_places(
    run_id: str, sources: tuple[str, ...], placed: Mapping[str, tuple[str, ...]]
) -> None:
    """Refuse inputs of one run that put two files on one path, or a file where another
    input has a folder (overlays are exempt: laying files over the run folder is their job)."""
    if clash := _first_clash(sources, placed):
        raise _clash_error(run_id, *clash)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _first_clash(
    sources: tuple[str, ...],
    placed: Mapping[str, tuple[str, ...]],
    files: dict[str, str] | None = None,
    folders: dict[str, str] | None = None,
) -> tuple[str, str, str] | None:
    """The first (other input, input, path) where ``sources``, in order, meet; None if they
    do not. ``files`` and ``folders`` are filled with each path's (and parent's) input."""
    files = {} if files is None else files
    folders = {} if folders is None else folders
    for source in sources:
        for path in placed[source]:
            parents = _parents(path)
            other = files.get(path) or folders.get(path)
            other = other or next((files[p] for p in parents if p in files), None)
            if other is not None and other != source:
                return other, source, path
            files[path] = source
            for p in parents:
                folders.setdefault(p, source)
    return None


def _clash_error(run_id: str, other: str, source: str, path: str) -> ConfigError:
    return ConfigError(
        f"inputs {other!r} and {source!r} of run {run_id} both land on {path!r} "
        "in the run folder; rename one, or put them in folders of their own."
    )
