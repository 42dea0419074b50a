"""Parameter sets for sweeps: product, zip, CSV rows and lists, held as axes or rows."""

from __future__ import annotations

import builtins
import csv
import itertools
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from azmanagers.batch.checks import check_text, check_variable, env_value, unknown_key
from azmanagers.errors import ConfigError

MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 4096
MAX_RUNS = 1_000_000
"""A sweep with more runs is refused: split it into several jobs."""
MAX_AXIS_VALUES = MAX_RUNS

_INT = r"[+-]?\d+"
_RANGE = re.compile(rf"\s*({_INT})\s*\.\.\s*({_INT})\s*(?:\.\.\s*({_INT})\s*)?")
_PARAMS_KEYS = ("kind", "names", "axes", "rows")
_KINDS = ("product", "zip", "list")


def parse_axis(text: str) -> list[str]:
    """Parse an axis: ``"1..100"`` (inclusive), ``"1..10..2"`` (a step), or ``"a,b,c"``.

    Raises
    ------
    ConfigError
        For an empty text or item, a bad or empty range, or more than ``MAX_AXIS_VALUES``.
    """
    check_text(text, what="axis")
    match = _RANGE.fullmatch(text)
    if match:
        start, stop = int(match.group(1)), int(match.group(2))
        step = int(match.group(3)) if match.group(3) else (1 if stop >= start else -1)
        if step == 0:
            raise ConfigError(f"axis {text!r} has a step of 0; give a step such as 1..10..2.")
        count = len(range(start, stop + (1 if step > 0 else -1), step))
        if count == 0:
            raise ConfigError(
                f"axis {text!r} is empty: a step of {step} never goes from {start} to {stop}."
            )
        if count > MAX_AXIS_VALUES:
            raise ConfigError(f"axis {text!r} has {count} values; at most {MAX_AXIS_VALUES}.")
        return [str(v) for v in range(start, stop + (1 if step > 0 else -1), step)]
    if ".." in text and "," not in text:
        raise ConfigError(
            f"axis {text!r} is not a range: ranges are whole numbers, 'START..END' or "
            "'START..END..STEP' (e.g. 1..100); for a list write 'a,b,c'."
        )
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ConfigError(f"axis {text!r} has an empty value; write 'a,b,c' or a range 1..10.")
    return items


class Params:
    """A lazy, re-iterable, sized sequence of parameter dicts (values as str).

    Made by ``product``, ``zip``, ``rows`` or ``listing``; only the axes (or the rows) are
    held, never every combination.
    """

    __slots__ = ("_axes", "_kind", "_rows", "names")
    names: tuple[str, ...]

    def __init__(
        self,
        kind: str,
        names: Iterable[str],
        *,
        axes: Iterable[Iterable[object]] = (),
        rows: Iterable[Iterable[object]] = (),
    ) -> None:
        if kind not in _KINDS:
            raise ConfigError(f"params kind {kind!r} is not one of {', '.join(_KINDS)}.")
        self._kind = kind
        self.names = tuple(_name(n) for n in names)
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"parameter names {list(self.names)} repeat a name; give each once.")
        self._axes: tuple[tuple[str, ...], ...] = ()
        self._rows: tuple[tuple[str, ...], ...] = ()
        if kind == "list":
            self._rows = tuple(self._row(number, r) for number, r in enumerate(rows, 1))
            self._check_rows()
        else:
            self._axes = self._axes_of([tuple(a) for a in axes])
            self._check_axes()
        if len(self) > MAX_RUNS:
            raise ConfigError(
                f"this sweep has {len(self)} parameter sets; at most {MAX_RUNS}: split it into "
                "several jobs."
            )

    def _row(self, number: int, row: Iterable[object]) -> tuple[str, ...]:
        values = tuple(row)
        if len(values) != len(self.names):
            raise ConfigError(
                f"parameter set {number} has {len(values)} values for {len(self.names)} names "
                f"({', '.join(self.names)}); give one value per name."
            )
        return tuple(_value(v, n) for n, v in builtins.zip(self.names, values, strict=True))

    def _axes_of(self, axes: list[tuple[object, ...]]) -> tuple[tuple[str, ...], ...]:
        if not self.names:
            raise ConfigError(f"{self._kind}() has no axes: an empty sweep; give at least one.")
        if len(axes) != len(self.names):
            raise ConfigError(f"{self._kind}(): {len(self.names)} names but {len(axes)} axes.")
        out = []
        for name, values in builtins.zip(self.names, axes, strict=True):
            if not values:
                raise ConfigError(f"{self._kind}(): {name} has no values (an empty sweep).")
            out.append(tuple(_value(v, name) for v in values))
        return tuple(out)

    def _check_axes(self) -> None:
        if self._kind == "product":
            for name, values in builtins.zip(self.names, self._axes, strict=True):
                if len(set(values)) != len(values):
                    again = _repeat((v,) for v in values)[0]
                    raise ConfigError(
                        f"product(): {name} repeats the value {again!r}, which would make "
                        "duplicate runs; give each value once."
                    )
            return
        lengths = [len(v) for v in self._axes]
        if len(set(lengths)) > 1:
            a, b = next(
                (i, j) for i in range(len(lengths)) for j in range(i) if lengths[i] != lengths[j]
            )
            raise ConfigError(
                f"zip(): {self.names[b]} has {lengths[b]} values but {self.names[a]} has "
                f"{lengths[a]}; give every axis the same number of values, or use product()."
            )
        combos = list(builtins.zip(*self._axes, strict=True))
        if len(set(combos)) != len(combos):
            raise ConfigError(
                f"zip(): the values {self._named(_repeat(combos))} come twice, which would make "
                "duplicate runs; give each combination once."
            )

    def _check_rows(self) -> None:
        if not self._rows:
            raise ConfigError("the parameter list is empty (an empty sweep); give at least one.")
        if len(set(self._rows)) != len(self._rows):
            raise ConfigError(
                f"the parameter set {self._named(_repeat(self._rows))} comes twice, which would "
                "make duplicate runs; give each once."
            )

    def _named(self, values: tuple[str, ...]) -> dict[str, str]:
        return dict(builtins.zip(self.names, values, strict=True))

    def __iter__(self) -> Iterator[dict[str, str]]:
        if self._kind == "product":
            combos: Iterable[tuple[str, ...]] = itertools.product(*self._axes)
        elif self._kind == "zip":
            combos = builtins.zip(*self._axes, strict=True)
        else:
            combos = self._rows
        for combo in combos:
            yield dict(builtins.zip(self.names, combo, strict=True))

    def __len__(self) -> int:
        if self._kind == "product":
            return math.prod(len(v) for v in self._axes)
        if self._kind == "zip":
            return len(self._axes[0]) if self._axes else 0
        return len(self._rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self._kind, self.names, self._axes, self._rows))

    def __repr__(self) -> str:
        if self._kind == "list":
            return f"Params(list, names={list(self.names)}, {len(self)} sets)"
        sizes = ", ".join(
            f"{n}=<{len(v)} values>" for n, v in builtins.zip(self.names, self._axes, strict=True)
        )
        return f"{self._kind}({sizes})"

    def to_dict(self) -> dict[str, object]:
        """The JSON-able form: the kind, the names and the axes (or the rows)."""
        if self._kind == "list":
            return {
                "kind": "list",
                "names": list(self.names),
                "rows": [list(r) for r in self._rows],
            }
        return {
            "kind": self._kind,
            "names": list(self.names),
            "axes": [list(a) for a in self._axes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Params:
        """Rebuild ``Params`` from ``to_dict()``'s form (checked again)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"params must be a mapping, got {type(data).__name__}.")
        for key in data:
            if key not in _PARAMS_KEYS:
                unknown_key(key, _PARAMS_KEYS, where="the params")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ConfigError(f"params kind must be one of {', '.join(_KINDS)}, got {kind!r}.")
        return cls(
            kind,
            [str(n) for n in _seq(data.get("names"), "params names")],
            axes=[_seq(a, "an axis") for a in _seq(data.get("axes", []), "params axes")],
            rows=[_seq(r, "a row") for r in _seq(data.get("rows", []), "params rows")],
        )


def product(**axes: Iterable[object]) -> Params:
    """Every combination of the axes' values, in the order given (the last varies fastest)."""
    return Params("product", axes, axes=[_axis(n, v, "product") for n, v in axes.items()])


def zip(**axes: Iterable[object]) -> Params:  # batch.zip, as the issue names it
    """The i-th values of every axis together; every axis must have as many values."""
    return Params("zip", axes, axes=[_axis(n, v, "zip") for n, v in axes.items()])


def listing(items: Iterable[Mapping[str, object]]) -> Params:
    """An explicit list of parameter dicts; every dict must have the same names."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise ConfigError(f"a parameter list must be a list of dicts, got {items!r}.")
    names: tuple[str, ...] | None = None
    rows: list[tuple[str, ...]] = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"parameter set {number} must be a dict of names to values: {item!r}."
            )
        if names is None:
            names = tuple(str(k) for k in item)
            for key in item:
                _name(key)
        elif set(item) != set(names):
            raise ConfigError(
                f"parameter set {number} has the names {sorted(map(str, item))} but set 1 has "
                f"{sorted(names)}; give every set the same names."
            )
        rows.append(tuple(_value(item[n], n) for n in names))
    return Params("list", names or (), rows=rows)


def rows(path: str | Path) -> Params:
    """The rows of a CSV file with a header row: one parameter set per row (values stripped)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"parameter file {str(path)!r} does not exist; give a CSV file."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"parameter file {str(path)!r} cannot be read as text: {exc}.") from None
    try:
        table = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise ConfigError(f"parameter file {str(path)!r} is not valid CSV: {exc}.") from None
    if len(table) < 2:
        raise ConfigError(
            f"parameter file {str(path)!r} needs a header row of names and at least one row of "
            "values (an empty sweep otherwise)."
        )
    names = [c.strip() for c in table[0]]
    data = []
    for number, row in enumerate(table[1:], 2):
        if len(row) != len(names):
            raise ConfigError(
                f"{str(path)!r} line {number}: {len(row)} values for {len(names)} columns "
                f"({', '.join(names)}); give one value per column."
            )
        data.append([c.strip() for c in row])
    try:
        return Params("list", names, rows=data)
    except ConfigError as exc:
        raise ConfigError(f"parameter file {str(path)!r}: {exc}") from None


def _name(name: object) -> str:
    return check_variable(name, what="parameter", max_chars=MAX_NAME_CHARS)


def _value(value: object, name: str) -> str:
    return env_value(value, what=f"parameter {name} value", max_chars=MAX_VALUE_CHARS)


def _axis(name: str, values: Iterable[object], kind: str) -> tuple[str, ...]:
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise ConfigError(
            f"{kind}(): {name} must be a list of values (e.g. [1, 2] or range(10)), got "
            f"{values!r}; for text such as '1..100' or 'a,b' use parse_axis()."
        )
    out = []
    for value in values:
        out.append(_value(value, name))
        if len(out) > MAX_AXIS_VALUES:
            raise ConfigError(f"{kind}(): {name} has more than {MAX_AXIS_VALUES} values.")
    return tuple(out)


def _repeat(values: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    seen: set[tuple[str, ...]] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return ()


def _seq(value: object, what: str) -> list[object]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"{what} must be a list, got {value!r}.")
    return list(value)
