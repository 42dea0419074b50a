"""YAML job specs: a model, its sweep and where to run it, read with ``yaml.safe_load`` only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import yaml

from azmanagers.batch.model import (
    MODEL_KEYS,
    Model,
    Package,
    check_source,
    is_url,
    output_from,
    unknown_key,
)
from azmanagers.batch.multinode import DEFAULT_PORT_WAIT, MasterWorker, MpiModel
from azmanagers.batch.sweep import Params, Sweep, listing, parse_axis, product, rows, zip
from azmanagers.errors import ConfigError

KEYS = (
    "name",
    "command",
    "inputs",
    "shared",
    "packages",
    "env",
    "sweep",
    "outputs",
    "retries",
    "timeout",
    "cluster",
    "workers",
    "storage",
    "mpi",
    "master",
    "worker",
    "port",
    "port_wait",
)
MASTER_WORKER_KEYS = ("master", "worker", "port", "port_wait")
SWEEP_KEYS = ("product", "zip", "rows", "list", "overlays")
PACKAGE_KEYS = ("name", "version", "path")
OUTPUT_KEYS = ("pattern", "when")
MAX_SPEC_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class JobSpec:
    """A job read from a spec: its name, its sweep (one run for a plain model) and placement."""

    name: str
    sweep: Sweep
    cluster: str | None
    workers: int | None
    storage: str | None
    base: Path


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML spec; relative paths in it resolve against the spec's folder.

    Raises
    ------
    ConfigError
        For a missing or unreadable file, bad YAML, or any bad key or value (named).
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise ConfigError(f"spec {str(path)!r} is {size} bytes; at most {MAX_SPEC_BYTES}.")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"spec file {str(path)!r} does not exist; give a YAML file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"spec file {str(path)!r} cannot be read as text: {exc}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"spec {str(path)!r} must be a mapping of keys ({', '.join(KEYS)}), "
            f"not {type(data).__name__}."
        )
    return spec_from_mapping(data, base=file.resolve().parent, source=str(path))


def spec_from_mapping(data: Mapping[str, object], *, base: Path, source: str) -> JobSpec:
    """Make a ``JobSpec`` from a spec's mapping; ``source`` names it in every error.

    Local paths (inputs, shared, package paths, rows files, overlays) that are relative
    resolve against ``base`` and are kept absolute; storage URLs are kept as given.
    """
    base = Path(base).expanduser().resolve()
    try:
        return _spec(data, base)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _spec(data: Mapping[str, object], base: Path) -> JobSpec:
    if not isinstance(data, Mapping):
        raise ConfigError(f"a spec must be a mapping of keys, not {type(data).__name__}.")
    for key in data:
        if key not in KEYS:
            unknown_key(key, KEYS, where="the spec")
    if data.get("name") in (None, ""):
        raise ConfigError("the spec has no 'name'; give one.")
    name = _text(data["name"], "name")
    params, overlays = _sweep(data.get("sweep"), base)
    workers = data.get("workers")
    model: Model
    if any(key in data for key in MASTER_WORKER_KEYS):
        model = _master_worker(data, name, base)
        workers = None  # the worker runs' count; the cluster gets workers + 1 nodes
    else:
        model = _model(data, name, base, where="the spec")
        if "mpi" in data:  # (an empty mpi: is a mistake, not a plain model)
            model = _mpi(model, data["mpi"])
    sweep = Sweep(model, params, overlays)
    if isinstance(model, MasterWorker):
        model.worker_sweep(sweep)  # the worker's {NAME}s are checked now, not at submit
    return JobSpec(
        name=name,
        sweep=sweep,
        cluster=_optional_text(data.get("cluster"), "cluster"),
        workers=None if workers is None else _count(workers, "workers", minimum=1),
        storage=_optional_text(data.get("storage"), "storage"),
        base=base,
    )


def _model(data: Mapping[str, object], name: str, base: Path, *, where: str) -> Model:
    """A plain model from a mapping's model keys (the spec's, or ``master:``/``worker:``)."""
    if data.get("command") in (None, ""):
        raise ConfigError(f"{where} has no 'command'; give one.")
    return Model(
        name,
        command=_text(data["command"], "command"),
        inputs=[_path(p, base, "inputs") for p in _items(data.get("inputs"), "inputs")],
        shared=[_path(p, base, "shared") for p in _items(data.get("shared"), "shared")],
        packages=[_package(p, base) for p in _items(data.get("packages"), "packages")],
        env=_env(data.get("env")),
        outputs=[output_from(o) for o in _items(data.get("outputs"), "outputs")],
        retries=_count(data.get("retries", 0), "retries", minimum=0),
        timeout=_timeout(data.get("timeout")),
    )


def _mpi(model: Model, value: object) -> MpiModel:
    """``mpi: {nodes, ranks_per_node, coordination, library, oversubscribe, node_wait}``."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"mpi must be a mapping such as {{nodes: 4, ranks_per_node: 2}}, got {value!r}."
        )
    return MpiModel.from_dict({**model.to_dict(), "mpi": dict(value)})


def _master_worker(data: Mapping[str, object], name: str, base: Path) -> MasterWorker:
    """``master:``, ``worker:``, ``workers:``, ``port:``, ``port_wait:``; the name is the job's."""
    stray = [k for k in (*MODEL_KEYS, "mpi") if k != "name" and k in data]
    if stray:
        raise ConfigError(
            f"with master: and worker:, {', '.join(repr(k) for k in stray)} belong under "
            "master: or worker: (the top-level name is the job's); move them there."
        )
    roles: dict[str, Model] = {}
    for role in ("master", "worker"):
        value = data.get(role)
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{role}: must be a model mapping (command, inputs, ...), got {value!r}; a "
                "master/worker spec gives both master: and worker:."
            )
        for key in value:
            if key not in MODEL_KEYS:
                unknown_key(key, MODEL_KEYS, where=f"{role}:")
        own = value.get("name")
        own_name = f"{name}-{role}" if own is None else _text(own, f"{role} name")
        roles[role] = _model(value, own_name, base, where=f"{role}:")
    if data.get("workers") is None:
        raise ConfigError("a spec with master: needs workers: (how many worker runs); give one.")
    port = data.get("port")
    if port is None and data.get("port_wait") is not None:
        raise ConfigError(
            "port_wait: says how long workers wait for the master's port, but no port: is "
            "given; give port: (the master's), or leave port_wait: out."
        )
    port_wait = data.get("port_wait", DEFAULT_PORT_WAIT)
    if port_wait is not None and not isinstance(port_wait, (str, int, float)):
        raise ConfigError(
            f"port_wait must be seconds or a duration such as '2m', got {port_wait!r}."
        )
    return MasterWorker(
        roles["master"],
        roles["worker"],
        workers=_count(data["workers"], "workers", minimum=1),
        port=None if port is None else _count(port, "port", minimum=1),
        port_wait=port_wait,
    )


def _sweep(value: object, base: Path) -> tuple[Params | None, dict[str, str]]:
    if value is None:
        return None, {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            "sweep must be a mapping with one of product, zip, rows or list (and/or overlays), "
            f"got {value!r}."
        )
    for key in value:
        if key not in SWEEP_KEYS:
            unknown_key(key, SWEEP_KEYS, where="sweep")
    kinds = [k for k in ("product", "zip", "rows", "list") if k in value]
    if len(kinds) > 1:
        raise ConfigError(
            f"sweep has {' and '.join(kinds)}; give one of them (a product of a zip is not "
            "supported: list the combinations with list: or rows:)."
        )
    overlays_value = value.get("overlays")
    if not kinds and not overlays_value:
        raise ConfigError("sweep is empty; give product, zip, rows, list or overlays.")
    overlays: dict[str, str] = {}
    if overlays_value is not None:
        if not isinstance(overlays_value, Mapping) or not overlays_value:
            raise ConfigError(f"sweep overlays must map names to folders, got {overlays_value!r}.")
        for key, folder in overlays_value.items():
            overlays[str(key)] = _path(folder, base, f"overlay {key!r}")
    if not kinds:
        return None, overlays
    kind = kinds[0]
    body = value[kind]
    if kind == "rows":
        return rows(_path(body, base, "sweep rows")), overlays
    if kind == "list":
        items: list[Mapping[str, object]] = []
        for item in _items(body, "sweep list"):
            if not isinstance(item, Mapping):
                raise ConfigError(
                    f"sweep list items must be mappings of names to values: {item!r}."
                )
            items.append(item)
        return listing(items), overlays
    if not isinstance(body, Mapping) or not body:
        raise ConfigError(
            f"sweep {kind} must map names to values (a list, or text like '1..100' or 'a,b'), "
            f"got {body!r}."
        )
    axes = {str(k): _axis(v, f"sweep {kind} {k}") for k, v in body.items()}
    return (product(**axes) if kind == "product" else zip(**axes)), overlays


def _axis(value: object, what: str) -> list[object]:
    if isinstance(value, str):
        return list(parse_axis(value))
    if isinstance(value, list):
        return value
    raise ConfigError(
        f"{what} is {value!r}; give a list ([1, 2]), a range ('1..100') or 'a,b,c' in quotes."
    )


def _items(value: object, what: str) -> list[object]:
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        return [value]
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be a list, got {type(value).__name__} {value!r}.")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, got {type(value).__name__} {value!r}.")
    return value


def _optional_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be non-empty text, got {value!r}.")
    return value


def _count(value: object, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be a whole number >= {minimum}, got {value!r}.")
    return value


def _timeout(value: object) -> str | float | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"timeout must be seconds or a duration such as '2h', got {value!r}.")


def _path(value: object, base: Path, what: str) -> str:
    """A local path made absolute against ``base`` (a trailing '/' kept); a URL as given."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    text = check_source(_text(value, what), what=what)
    if is_url(text):
        return text
    joined = os.path.join(str(base), os.path.expanduser(text))
    return os.path.normpath(joined) + ("/" if text.endswith("/") else "")


def _package(value: object, base: Path) -> Package:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"packages items must be mappings {{name, version, path}}, got {value!r}."
        )
    for key in value:
        if key not in PACKAGE_KEYS:
            unknown_key(key, PACKAGE_KEYS, where="a package")
    name, version = value.get("name"), value.get("version")
    if isinstance(version, float):
        raise ConfigError(
            f"package {name!r}: version {version!r} is a number in YAML (8.10 reads as 8.1); "
            f'write it in quotes, e.g. version: "{version}".'
        )
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if name is None or version is None:
        raise ConfigError(f"package {dict(value)!r} needs a name and a version.")
    path = value.get("path")
    return Package(
        _text(name, "package name"),
        _text(version, "package version"),
        None if path is None else _path(path, base, f"package {name!r} path"),
    )


def _env(value: object) -> dict[str, str | int | float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"env must map names to values, got {value!r}.")
    return cast("dict[str, str | int | float]", dict(value))  # Model checks names and values
