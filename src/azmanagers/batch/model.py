"""A batch model: an executable, its inputs, environment, packages and outputs, as checked data."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

# the checks live in batch.checks; the names callers import from here are re-exported
from azmanagers.batch.checks import RESERVED_PREFIXES as RESERVED_PREFIXES
from azmanagers.batch.checks import URL_SCHEMES as URL_SCHEMES
from azmanagers.batch.checks import canonical_json, check_arg_size, check_text, checked_env
from azmanagers.batch.checks import check_relative as check_relative
from azmanagers.batch.checks import check_source as check_source
from azmanagers.batch.checks import is_url as is_url
from azmanagers.batch.checks import parse_duration as parse_duration
from azmanagers.batch.checks import unknown_key as unknown_key
from azmanagers.errors import ConfigError

if TYPE_CHECKING:
    from azmanagers.batch.sweep import Sweep

WHEN = ("success", "failure", "always")
MAX_RETRIES = 100
PACKAGE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PACKAGE_PART = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ARCHIVE_LIKE = re.compile(r"\.(?:gz|bz2|xz|zst|7z|rar|whl|egg|jar)$", re.IGNORECASE)
MODEL_KEYS = (
    "name",
    "command",
    "inputs",
    "shared",
    "packages",
    "env",
    "outputs",
    "retries",
    "timeout",
)
"""The keys of a model: in its dict form, at the top of a spec, or under ``master:``/``worker:``."""


@dataclass(frozen=True)
class Output:
    """A glob of files (relative to the run dir, ``**`` recursive) kept when ``when`` holds."""

    pattern: str
    when: str = "success"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", check_relative(self.pattern, what="output pattern"))
        if self.when not in WHEN:
            hint = difflib.get_close_matches(str(self.when), WHEN, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"output {self.pattern!r}: when={self.when!r} is not one of "
                f"{', '.join(WHEN)}{extra}."
            )

    @classmethod
    def parse(cls, text: str) -> Output:
        """Parse ``"glob[:when]"``: ``"out/**:always"`` -> ``Output("out/**", "always")``."""
        check_text(text, what="output")
        pattern, sep, when = text.rpartition(":")
        if sep and re.fullmatch(r"[A-Za-z]+", when):
            if when.lower() in WHEN:
                return cls(pattern, when.lower())
            hint = difflib.get_close_matches(when.lower(), WHEN, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"output {text!r}: {when!r} is not a condition{extra}; write "
                f"'glob:when' with when one of {', '.join(WHEN)}, or just 'glob' for success."
            )
        return cls(text)


@dataclass(frozen=True)
class Package:
    """An application package, unpacked once per node; ``path`` None means a registered one."""

    name: str
    version: str
    path: str | None = None

    def __post_init__(self) -> None:
        for what, part in (("name", self.name), ("version", self.version)):
            if not isinstance(part, str) or not _PACKAGE_PART.fullmatch(part):
                raise ConfigError(
                    f"package {what} {part!r} is not valid; use 1 to 64 letters, digits, '_', "
                    "'.' or '-' (e.g. Package('dsm2', '8.2', 'dist/dsm2-8.2.tar.gz'))."
                )
        if self.path is None:
            return
        path = check_source(self.path, what=f"package {self.name} {self.version} path")
        object.__setattr__(self, "path", path)
        lower = path.rstrip("/").lower()
        if not lower.endswith(PACKAGE_SUFFIXES) and _ARCHIVE_LIKE.search(lower):
            raise ConfigError(
                f"package {self.name} {self.version}: {path!r} is not an archive we unpack; give "
                f"a {', '.join(PACKAGE_SUFFIXES)} file or a folder."
            )

    @property
    def env_name(self) -> str:
        """The variable holding the unpacked folder, as Azure Batch names it."""
        tail = re.sub(r"[^a-z0-9_]", "_", f"{self.name}_{self.version}".lower())
        return "AZ_BATCH_APP_PACKAGE_" + tail


class Model:
    """An executable run by bash in a fresh run directory, with its inputs and outputs.

    Parameters
    ----------
    name
        Letters, digits, ``_``, ``.``, ``-`` (up to 63, starting with a letter or digit).
    command
        Run by ``bash`` in the run directory. ``{NAME}`` takes a parameter's or env value
        (shell-quoted); ``{{``/``}}`` are literal braces; ``${NAME}`` is left to the shell.
    inputs
        Files, folders (``"study/"``: its contents) or storage URLs placed in each run dir;
        ``{NAME}`` makes per-run inputs.
    shared
        Inputs the same for every run: uploaded once, fetched once per node.
    packages
        ``Package`` objects, unpacked once per node.
    env
        Variables for every run; names not ``AZM_*``/``AZ_BATCH_*``; parameters override them.
    outputs
        ``Output`` objects or ``"glob[:when]"`` strings.
    retries
        How often a failed run (non-zero exit) is run again.
    timeout
        Seconds, or ``"90s"``/``"30m"``/``"2h"``/``"1d"``; None: no limit.
    """

    __slots__ = (
        "command",
        "env",
        "inputs",
        "name",
        "outputs",
        "packages",
        "retries",
        "shared",
        "timeout_s",
    )
    name: str
    command: str
    inputs: tuple[str, ...]
    shared: tuple[str, ...]
    packages: tuple[Package, ...]
    env: Mapping[str, str]
    outputs: tuple[Output, ...]
    retries: int
    timeout_s: float | None

    def __init__(
        self,
        name: str,
        *,
        command: str,
        inputs: Iterable[str | os.PathLike[str]] = (),
        shared: Iterable[str | os.PathLike[str]] = (),
        packages: Iterable[Package] = (),
        env: Mapping[str, str | int | float] | None = None,
        outputs: Iterable[Output | str] = (),
        retries: int = 0,
        timeout: str | float | None = None,
    ) -> None:
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
            raise ConfigError(
                f"model name {name!r} is not valid; use up to 63 letters, digits, '_', '.' or "
                "'-', starting with a letter or digit (e.g. 'hydro')."
            )
        set_ = object.__setattr__
        set_(self, "name", name)
        if command is None or (isinstance(command, str) and not command.strip()):
            raise ConfigError(f"model {name!r} has no command; give the command line to run.")
        set_(self, "command", check_text(command, what=f"model {name!r} command"))
        check_arg_size(
            self.command,
            what=f"model {name!r} command",
            hint="put the script in an input file and run that",
        )
        set_(self, "inputs", _sources(inputs, what="inputs"))
        set_(self, "shared", _sources(shared, what="shared"))
        set_(self, "packages", _packages(packages))
        set_(self, "env", MappingProxyType(checked_env(env)))
        set_(self, "outputs", _outputs(outputs))
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be a whole number >= 0, got {retries!r}.")
        if retries > MAX_RETRIES:
            raise ConfigError(f"retries={retries} is more than {MAX_RETRIES}; give fewer.")
        set_(self, "retries", retries)
        set_(self, "timeout_s", None if timeout is None else parse_duration(timeout))

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"a Model cannot be changed (tried to set {key!r}); make a new one")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"a Model cannot be changed (tried to delete {key!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        # env values may be secrets: only their names are shown
        return (
            f"Model({self.name!r}, command={self.command!r}, inputs={list(self.inputs)!r}, "
            f"shared={list(self.shared)!r}, packages={list(self.packages)!r}, "
            f"env=<{', '.join(sorted(self.env))}>, outputs={list(self.outputs)!r}, "
            f"retries={self.retries}, timeout_s={self.timeout_s})"
        )

    def sweep(
        self,
        params: Iterable[Mapping[str, object]] | None = None,
        *,
        overlays: Mapping[str, str] | None = None,
    ) -> Sweep:
        """Many runs of this model: one per parameter dict (and per overlay folder)."""
        from azmanagers.batch.sweep import Params, Sweep, listing

        if params is not None and not isinstance(params, Params):
            params = listing(params)
        return Sweep(self, params, overlays or {})

    def to_dict(self) -> dict[str, object]:
        """The canonical JSON-able form (paths as given); ``from_dict`` reverses it."""
        return {
            "name": self.name,
            "command": self.command,
            "inputs": list(self.inputs),
            "shared": list(self.shared),
            "packages": [
                {"name": p.name, "version": p.version, "path": p.path} for p in self.packages
            ],
            "env": dict(sorted(self.env.items())),
            "outputs": [{"pattern": o.pattern, "when": o.when} for o in self.outputs],
            "retries": self.retries,
            "timeout": self.timeout_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Model:
        """Rebuild a model from ``to_dict()``'s form (checked again); the form of an
        ``MpiModel`` (key ``mpi``) or a ``MasterWorker`` (key ``worker``) gives one."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model must be a mapping, got {type(data).__name__}.")
        if "mpi" in data or "worker" in data:  # an MpiModel's or a MasterWorker's form
            from azmanagers.batch.multinode import multinode_from_dict

            return multinode_from_dict(data)
        for key in data:
            if key not in MODEL_KEYS:
                unknown_key(key, MODEL_KEYS, where="the model")
        for key in ("name", "command"):
            if key not in data:
                raise ConfigError(f"the model has no {key!r}; give one.")
        packages = [_package_from(p) for p in _listed(data.get("packages"), "packages")]
        outputs = [output_from(o) for o in _listed(data.get("outputs"), "outputs")]
        env = data.get("env")
        if env is not None and not isinstance(env, Mapping):
            raise ConfigError(f"model env must be a mapping of names to values, got {env!r}.")
        retries = data.get("retries", 0)
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise ConfigError(f"retries must be a whole number >= 0, got {retries!r}.")
        timeout = data.get("timeout")
        if timeout is not None and not isinstance(timeout, (str, int, float)):
            raise ConfigError(f"model timeout must be seconds or a duration, got {timeout!r}.")
        return cls(
            _str(data["name"], "model name"),
            command=_str(data["command"], "model command"),
            inputs=[_str(s, "an input") for s in _listed(data.get("inputs"), "inputs")],
            shared=[_str(s, "a shared input") for s in _listed(data.get("shared"), "shared")],
            packages=packages,
            env=env,
            outputs=outputs,
            retries=retries,
            timeout=timeout,
        )

    def digest(self) -> str:
        """The SHA-256 (hex) of the canonical JSON of ``to_dict()``."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__} {value!r}.")
    return value


def _listed(value: object, what: str) -> list[object]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"model {what} must be a list, got {type(value).__name__} {value!r}.")
    return list(value)


def _package_from(item: object) -> Package:
    if isinstance(item, Package):
        return item
    if not isinstance(item, Mapping):
        raise ConfigError(f"a package must be a mapping {{name, version, path}}, got {item!r}.")
    known = ("name", "version", "path")
    for key in item:
        if key not in known:
            unknown_key(key, known, where="a package")
    if "name" not in item or "version" not in item:
        raise ConfigError(f"package {dict(item)!r} needs a name and a version.")
    path = item.get("path")
    return Package(
        _str(item["name"], "package name"),
        _str(item["version"], "package version"),
        None if path is None else _str(path, "package path"),
    )


def output_from(item: object) -> Output:
    """An ``Output`` from an ``Output``, a ``"glob[:when]"`` text or a ``{pattern, when}`` map."""
    if isinstance(item, (Output, str)):
        return item if isinstance(item, Output) else Output.parse(item)
    if not isinstance(item, Mapping):
        raise ConfigError(f"an output must be 'glob[:when]' or {{pattern, when}}, got {item!r}.")
    known = ("pattern", "when")
    for key in item:
        if key not in known:
            unknown_key(key, known, where="an output")
    if "pattern" not in item:
        raise ConfigError(f"output {dict(item)!r} has no pattern; give one such as 'out/**'.")
    return Output(
        _str(item["pattern"], "output pattern"), _str(item.get("when", "success"), "when")
    )


def _sources(values: Iterable[str | os.PathLike[str]], *, what: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes, os.PathLike)) or not isinstance(values, Iterable):
        raise ConfigError(f"model {what} must be a list of paths or URLs, got {values!r}.")
    out = tuple(check_source(v, what=f"{what}[{i}]") for i, v in enumerate(values))
    seen: set[str] = set()
    for source in out:
        if source in seen:
            raise ConfigError(f"{what} lists {source!r} twice; list it once.")
        seen.add(source)
    return out


def _packages(values: Iterable[Package]) -> tuple[Package, ...]:
    if not isinstance(values, Iterable) or isinstance(values, (str, Package)):
        raise ConfigError(f"model packages must be a list of Package, got {values!r}.")
    out: list[Package] = []
    names: set[str] = set()
    for item in values:
        if not isinstance(item, Package):
            raise ConfigError(
                f"model packages take batch.Package(name, version, path), got {item!r}."
            )
        if item.env_name in names:
            raise ConfigError(f"package {item.name} {item.version} is listed twice; list it once.")
        names.add(item.env_name)
        out.append(item)
    return tuple(out)


def _outputs(values: Iterable[Output | str]) -> tuple[Output, ...]:
    if isinstance(values, (str, Output)) or not isinstance(values, Iterable):
        raise ConfigError(
            f"model outputs must be a list of Output or 'glob[:when]', got {values!r}."
        )
    out = tuple(v if isinstance(v, Output) else output_from(v) for v in values)
    if len(set(out)) != len(out):
        raise ConfigError("model outputs list the same pattern and condition twice; list it once.")
    return out
