"""Sweeps: a model's runs over parameter sets and overlay folders, expanded lazily."""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from azmanagers.batch.checks import (
    canonical_json,
    check_relative,
    check_run_sizes,
    check_source,
    unknown_key,
)
from azmanagers.batch.model import Model, Output
from azmanagers.batch.params import (
    MAX_AXIS_VALUES,
    MAX_NAME_CHARS,
    MAX_RUNS,
    MAX_VALUE_CHARS,
    Params,
    listing,
    parse_axis,
    product,
    rows,
    zip,
)
from azmanagers.errors import ConfigError

__all__ = [
    "MAX_AXIS_VALUES",
    "MAX_NAME_CHARS",
    "MAX_RUNS",
    "MAX_VALUE_CHARS",
    "OVERLAY",
    "RUN_ID_HASH_CHARS",
    "RUN_ID_SLUG_CHARS",
    "Params",
    "RunSpec",
    "Sweep",
    "check_relative",
    "listing",
    "parse_axis",
    "product",
    "rows",
    "run_id",
    "substitute",
    "zip",
]
"""``Params`` and its makers live in ``batch.params``; they are re-exported here."""

OVERLAY = "OVERLAY"
"""The parameter naming a run's overlay folder, in overlay sweeps."""
RUN_ID_SLUG_CHARS = 40
RUN_ID_HASH_CHARS = 10

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\$\{(?!\{)[^{}]*\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_OVERLAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SWEEP_KEYS = ("model", "params", "overlays")


def substitute(template: str, params: Mapping[str, str], *, where: str) -> str:
    """Replace each ``{NAME}`` in ``template`` by ``params[NAME]``; never ``str.format``.

    ``{{`` and ``}}`` are literal braces; ``${...}`` is left alone (the shell's); other braces
    (``{1..3}``, ``awk '{print $1}'``) stay as they are.

    Raises
    ------
    ConfigError
        For a ``{NAME}`` not in ``params``, naming ``where`` and the known names.
    """

    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        if name is None:
            return token  # ${...}: the shell expands it
        if name not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ConfigError(
                f"{where}: {{{name}}} names no parameter or env variable (known: {known}); "
                f"fix the name, or write {{{{{name}}}}} for literal braces."
            )
        return params[name]

    return _PLACEHOLDER.sub(one, template)


def run_id(params: Mapping[str, str]) -> str:
    """A run's id from its parameters only: ``<slug of the values>-<10 hex of SHA-256>``.

    The same parameters give the same id in any dict order; no parameters give ``run-<hash>``.
    """
    ordered = dict(sorted(params.items()))
    digest = hashlib.sha256(canonical_json(ordered)).hexdigest()[:RUN_ID_HASH_CHARS]
    slug = "_".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", v) for v in ordered.values())
    slug = slug[:RUN_ID_SLUG_CHARS].strip("._-") or "run"
    return f"{slug}-{digest}"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep, with every ``{NAME}`` substituted."""

    run_id: str
    params: Mapping[str, str] = field(hash=False)
    command: str
    env: Mapping[str, str] = field(hash=False)
    inputs: tuple[str, ...]
    outputs: tuple[Output, ...]
    overlay: str | None


@dataclass(frozen=True)
class Sweep:
    """Runs of ``model``: one per parameter set, times one per overlay folder (if any).

    ``params`` may be ``Params`` or any iterable of dicts (taken as ``listing``); ``overlays``
    maps a name to a folder (a local path or URL) laid over each run dir.
    """

    model: Model
    params: Params | None = None
    overlays: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, Model):
            raise ConfigError(f"a sweep needs a batch.Model, got {type(self.model).__name__}.")
        params = self.params
        if params is not None and not isinstance(params, Params):
            params = listing(params)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "overlays", MappingProxyType(_overlays(self.overlays)))
        names = params.names if params is not None else ()
        if self.overlays and OVERLAY in names:
            raise ConfigError(
                f"a parameter is named {OVERLAY}, which an overlay sweep sets to the overlay's "
                "name; rename the parameter."
            )
        if len(self) > MAX_RUNS:
            raise ConfigError(f"this sweep has {len(self)} runs; at most {MAX_RUNS}: split it.")
        # every {NAME} must be known before any run is made: check with stand-in values
        known = dict.fromkeys([*self.model.env, *names], "x")
        if self.overlays:
            known[OVERLAY] = "x"
        self._compose(known, None, checking=True)
        for source in self.model.shared:
            used = [n for n in _PLACEHOLDER.findall(source) if n in known]
            if used:
                raise ConfigError(
                    f"shared input {source!r} uses {{{used[0]}}}, but shared inputs are the same "
                    "for every run; list it under inputs for a per-run input."
                )

    def __len__(self) -> int:
        count = 1 if self.params is None else len(self.params)
        return count * max(1, len(self.overlays))

    def runs(self) -> Iterator[RunSpec]:
        """Each run in turn, made as it is asked for (never all held at once)."""
        sets: Iterable[dict[str, str]] = [{}] if self.params is None else self.params
        overlays: list[str | None] = list(self.overlays) or [None]
        for values in sets:
            for overlay in overlays:
                params = dict(values)
                if overlay is not None:
                    params[OVERLAY] = overlay
                yield self._compose(params, overlay)

    def spec_for(self, params: Mapping[str, str]) -> RunSpec:
        """The run of this sweep with these parameters (those of another sweep's run over the
        same parameters: a master/worker run's worker part)."""
        overlay = params.get(OVERLAY) if self.overlays else None
        return self._compose(dict(params), None if overlay is None else str(overlay))

    def _compose(
        self, params: dict[str, str], overlay: str | None, *, checking: bool = False
    ) -> RunSpec:
        model = self.model
        # {NAME} in an env value: a parameter, else another env variable's value as written
        raw = {**model.env, **params}
        env = {k: substitute(v, raw, where=f"env {k}") for k, v in model.env.items()}
        env.update(params)  # parameters override the model's env
        quoted = {k: shlex.quote(v) for k, v in env.items()}
        try:
            outputs = tuple(
                Output(substitute(o.pattern, env, where=f"output {o.pattern!r}"), o.when)
                for o in model.outputs
            )
        except ConfigError as exc:
            if checking:
                raise
            raise ConfigError(f"the run with parameters {params}: {exc}") from None
        command = substitute(model.command, quoted, where="command")
        check_run_sizes(run_id(params), command, env)
        return RunSpec(
            run_id=run_id(params),
            params=MappingProxyType(params),
            command=command,
            env=MappingProxyType(env),
            inputs=tuple(substitute(s, env, where=f"input {s!r}") for s in model.inputs),
            outputs=outputs,
            overlay=None if overlay is None else self.overlays[overlay],
        )

    def to_dict(self) -> dict[str, object]:
        """The JSON-able form: the model, the params (listed) and the overlays."""
        return {
            "model": self.model.to_dict(),
            "params": None if self.params is None else self.params.to_dict(),
            "overlays": dict(sorted(self.overlays.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Sweep:
        """Rebuild a sweep from ``to_dict()``'s form (checked again)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a sweep must be a mapping, got {type(data).__name__}.")
        for key in data:
            if key not in _SWEEP_KEYS:
                unknown_key(key, _SWEEP_KEYS, where="the sweep")
        model = data.get("model")
        params = data.get("params")
        overlays = data.get("overlays") or {}
        if not isinstance(model, Mapping):
            raise ConfigError("the sweep has no model mapping; give one.")
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"sweep params must be a mapping, got {params!r}.")
        if not isinstance(overlays, Mapping):
            raise ConfigError(f"sweep overlays must map names to folders, got {overlays!r}.")
        return cls(
            Model.from_dict(model),
            None if params is None else Params.from_dict(params),
            {str(k): v for k, v in overlays.items()},
        )

    def digest(self) -> str:
        """The SHA-256 (hex) of the canonical JSON of ``to_dict()``."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


def _overlays(overlays: Mapping[str, str] | None) -> dict[str, str]:
    if overlays is None:
        return {}
    if not isinstance(overlays, Mapping):
        raise ConfigError(f"overlays must map a name to a folder, got {overlays!r}.")
    out: dict[str, str] = {}
    for name, folder in overlays.items():
        if not isinstance(name, str) or not _OVERLAY_NAME.fullmatch(name):
            raise ConfigError(
                f"overlay name {name!r} is not valid; use up to 64 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit (e.g. 'wet')."
            )
        out[name] = check_source(folder, what=f"overlay {name!r} folder")
    return out
