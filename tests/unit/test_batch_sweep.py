"""batch.sweep: expansion, run ids, substitution, env composition and overlays."""

from __future__ import annotations

import builtins
import itertools
import math
import random
import re
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azmanagers.batch import sweep as sw
from azmanagers.batch.model import Model, Output
from azmanagers.batch.sweep import (
    Params,
    Sweep,
    listing,
    parse_axis,
    product,
    rows,
    run_id,
    substitute,
)
from azmanagers.errors import ConfigError

NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: not n.startswith(("AZM_", "AZ_BATCH_"))
)
VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12
)
AXES = st.dictionaries(NAMES, st.lists(VALUES, min_size=1, max_size=4, unique=True), max_size=4)


def _model(**kwargs: object) -> Model:
    base: dict[str, object] = {"command": "./run.sh"}
    base.update(kwargs)
    return Model("m", **base)  # type: ignore[arg-type]


# -- expansion --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(AXES.filter(bool))
def test_product_count_is_the_product_of_axis_lengths(axes: dict[str, list[str]]) -> None:
    params = product(**axes)
    expected = math.prod(len(v) for v in axes.values())
    assert len(params) == expected
    sets = list(params)
    assert len(sets) == expected
    assert sets == list(params)  # re-iterable, same order
    assert {tuple(s.items()) for s in sets} == {
        tuple(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())
    }
    assert params.names == tuple(axes)


@settings(max_examples=200, deadline=None)
@given(AXES.filter(bool))
def test_run_ids_are_unique_and_stable_across_dict_order(axes: dict[str, list[str]]) -> None:
    runs = list(_model().sweep(product(**axes)).runs())
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)
    shuffled = list(axes.items())
    random.Random(len(ids)).shuffle(shuffled)
    again = {r.run_id for r in _model().sweep(product(**dict(shuffled))).runs()}
    assert again == set(ids)
    for run in runs:
        assert re.fullmatch(r"[A-Za-z0-9_.-]{1,40}-[0-9a-f]{10}", run.run_id)
        assert not run.run_id.startswith((".", "-"))
        reordered = dict(reversed(list(run.params.items())))
        assert run_id(reordered) == run.run_id


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6))
def test_zip_pairs_values_and_refuses_unequal_lengths(n: int, m: int) -> None:
    a, b = [str(i) for i in range(n)], [f"c{i}" for i in range(m)]
    if n == m:
        params = sw.zip(RUN_NO=a, CASE=b)
        assert len(params) == n
        assert list(params) == [{"RUN_NO": x, "CASE": y} for x, y in zip(a, b, strict=True)]
    else:
        with pytest.raises(ConfigError) as info:
            sw.zip(RUN_NO=a, CASE=b)
        assert str(info.value) == (
            f"zip(): RUN_NO has {n} values but CASE has {m}; give every axis the same number of "
            "values, or use product()."
        )


def test_values_become_text() -> None:
    assert list(product(N=range(2), X=[1.5])) == [{"N": "0", "X": "1.5"}, {"N": "1", "X": "1.5"}]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: product(), "empty sweep"),
        (lambda: product(A=[]), "no values"),
        (lambda: sw.zip(), "empty sweep"),
        (lambda: listing([]), "empty"),
        (lambda: product(A="abc"), "list of values"),
        (lambda: product(A=5), "list of values"),
        (lambda: product(A=[1, "1"]), "repeats the value '1'"),
        (lambda: sw.zip(A=[1, 1], B=["x", "x"]), "come twice"),
        (lambda: listing([{"A": 1}, {"A": "1"}]), "comes twice"),
        (lambda: listing([{"A": 1}, {"B": 1}]), "same names"),
        (lambda: listing(["x"]), "dict of names"),
        (lambda: product(AZM_X=[1]), "runner sets"),
        (lambda: product(AZ_BATCH_TASK_ID=[1]), "runner sets"),
        (lambda: product(**{"1A": [1]}), "not a variable name"),
        (lambda: product(**{"A" * 65: [1]}), "longer than 64"),
        (lambda: product(A=[True]), "give text"),
        (lambda: product(A=["x\0"]), "NUL"),
        (lambda: product(A=["x" * 4097]), "at most 4096"),
        (lambda: product(A=range(1001), B=range(1000)), "split it"),
    ],
)
def test_bad_params_say_what_to_do(make: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()  # type: ignore[operator]


def test_len_and_runs_are_lazy() -> None:
    sweep = _model(command="run {CASE} {RUN_NO}").sweep(
        product(RUN_NO=range(10000), CASE=["a", "b", "c", *(f"c{i}" for i in range(97))])
    )
    start = time.perf_counter()
    assert len(sweep) == 1_000_000
    tracemalloc.start()
    try:
        first = list(itertools.islice(sweep.runs(), 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5.0
    assert peak < 1_000_000  # a million RunSpecs would be hundreds of MB
    assert [r.params for r in first] == [
        {"RUN_NO": "0", "CASE": "a"},
        {"RUN_NO": "0", "CASE": "b"},
        {"RUN_NO": "0", "CASE": "c"},
    ]


def test_a_model_alone_is_one_run_without_params() -> None:
    sweep = _model().sweep()
    (run,) = list(sweep.runs())
    assert len(sweep) == 1 and run.params == {} and run.run_id.startswith("run-")
    assert run.run_id == run_id({})


def test_a_plain_list_of_dicts_is_a_listing() -> None:
    sweep = _model().sweep([{"A": 1}, {"A": 2}])
    assert [dict(r.params) for r in sweep.runs()] == [{"A": "1"}, {"A": "2"}]


def test_rows_reads_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "params.csv"
    path.write_text("\ufeffRUN_NO, CASE\n1, a\n\n2,b c\n", encoding="utf-8")
    params = rows(path)
    assert params.names == ("RUN_NO", "CASE")
    assert list(params) == [{"RUN_NO": "1", "CASE": "a"}, {"RUN_NO": "2", "CASE": "b c"}]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("A,B\n", "at least one row"),
        ("", "at least one row"),
        ("A,B\n1\n", "line 2: 1 values for 2 columns"),
        ("A,A\n1,2\n", "repeat a name"),
        ("A-B\n1\n", "not a variable name"),
        ("A\n1\n1\n", "comes twice"),
    ],
)
def test_rows_refuses_bad_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as info:
        rows(path)
    assert "p.csv" in str(info.value)


def test_rows_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.csv.*does not exist"):
        rows(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1..5", ["1", "2", "3", "4", "5"]),
        ("1..10..3", ["1", "4", "7", "10"]),
        ("3..1", ["3", "2", "1"]),
        ("-1..1", ["-1", "0", "1"]),
        ("10..1..-4", ["10", "6", "2"]),
        ("a, b ,c", ["a", "b", "c"]),
        ("only", ["only"]),
        ("1.5,2.5", ["1.5", "2.5"]),
    ],
)
def test_parse_axis(text: str, values: list[str]) -> None:
    assert parse_axis(text) == values


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty value"),
        ("a,,b", "empty value"),
        ("1..x", "not a range"),
        ("1..10..0", "step of 0"),
        ("1..10..-1", "is empty"),
        ("1..99999999", "at most"),
    ],
)
def test_parse_axis_refuses(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_axis(text)


# -- substitution -----------------------------------------------------------------------------


def test_substitute_replaces_names_and_keeps_literal_braces() -> None:
    params = {"CASE": "wet", "N": "3"}
    assert substitute("{CASE}-{N}", params, where="x") == "wet-3"
    assert substitute("{{CASE}} {{ }}", params, where="x") == "{CASE} { }"
    assert substitute("${CASE} ${HOME:-/} {1..3} awk '{print $1}'", params, where="x") == (
        "${CASE} ${HOME:-/} {1..3} awk '{print $1}'"
    )
    assert substitute("${{CASE}}", params, where="x") == "${CASE}"
    assert substitute("{CASE.__class__} {N[0]} {0}", params, where="x") == (
        "{CASE.__class__} {N[0]} {0}"
    )


def test_substitute_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError) as info:
        substitute("run {CAS}", {"CASE": "a", "N": "1"}, where="command")
    text = str(info.value)
    assert "command" in text and "{CAS}" in text and "known: CASE, N" in text
    assert "{{CAS}}" in text


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(NAMES, VALUES, min_size=1, max_size=4),
    st.lists(st.text(alphabet="abc $;'\"\n", max_size=5), min_size=1, max_size=6),
)
def test_substitute_is_one_pass_and_values_are_data(
    params: dict[str, str], gaps: list[str]
) -> None:
    gaps = [g.rstrip("$") for g in gaps]  # "${NAME}" is the shell's, tested above
    names = list(params)
    template = "".join(f"{g}{{{names[i % len(names)]}}}" for i, g in enumerate(gaps))
    expected = "".join(f"{g}{params[names[i % len(names)]]}" for i, g in enumerate(gaps))
    assert substitute(template, params, where="x") == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab{}$ ", max_size=20))
def test_substitute_without_names_only_unescapes(template: str) -> None:
    try:
        out = substitute(template, {}, where="x")
    except ConfigError:
        assert re.search(r"(?<!\$)\{[A-Za-z_]", template)
        return
    assert out.count("{") <= template.count("{")


# -- env composition and commands -------------------------------------------------------------


def test_params_override_model_env_and_env_values_substitute() -> None:
    model = _model(env={"MODE": "hist", "CASE": "default", "TAG": "{MODE}-{CASE}"})
    (run,) = list(model.sweep(listing([{"CASE": "wet"}])).runs())
    assert run.env == {"MODE": "hist", "CASE": "wet", "TAG": "hist-wet"}
    assert run.params == {"CASE": "wet"}


def test_command_inputs_and_outputs_are_substituted_per_run() -> None:
    model = _model(
        command="./hydro {CASE}.inp {MODE}",
        env={"MODE": "hist"},
        inputs=["study/", "cases/{CASE}/"],
        outputs=["out/{CASE}/**:always"],
    )
    runs = list(model.sweep(product(CASE=["a", "b"])).runs())
    assert [r.command for r in runs] == ["./hydro a.inp hist", "./hydro b.inp hist"]
    assert [r.inputs for r in runs] == [("study/", "cases/a/"), ("study/", "cases/b/")]
    assert runs[1].outputs == (Output("out/b/**", "always"),)


def test_values_in_commands_stay_data(tmp_path: Path) -> None:
    nasty = "$(touch pwned); `touch pwned2` 'q' \"d\" ; x"
    model = _model(command="printf %s {V}")
    (run,) = list(model.sweep(listing([{"V": nasty}])).runs())
    done = subprocess.run(
        ["bash", "-c", run.command], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.stdout == nasty
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_name_is_refused_when_the_sweep_is_made() -> None:
    with pytest.raises(ConfigError, match=r"command: \{CAS\} names no parameter"):
        _model(command="run {CAS}").sweep(product(CASE=["a"]))
    with pytest.raises(ConfigError, match=r"\{X\}"):
        _model(env={"A": "{X}"}).sweep()
    with pytest.raises(ConfigError, match=r"^output 'o/\{Z\}': \{Z\} names no parameter"):
        _model(outputs=["o/{Z}"]).sweep(product(A=[1]))


def test_a_value_that_escapes_through_an_output_pattern_is_refused() -> None:
    sweep = _model(outputs=["out/{D}/*"]).sweep(product(D=["ok", ".."]))
    runs = sweep.runs()
    assert next(runs).outputs == (Output("out/ok/*"),)
    with pytest.raises(ConfigError, match=r"'D': '\.\.'.*leaves the run directory"):
        next(runs)


def test_shared_inputs_may_not_vary() -> None:
    with pytest.raises(ConfigError, match="same for every run"):
        _model(shared=["tables/{CASE}.h5"]).sweep(product(CASE=["a"]))


# -- overlays ---------------------------------------------------------------------------------


def test_overlays_multiply_the_params() -> None:
    sweep = _model(command="run {OVERLAY}").sweep(
        product(N=[1, 2]), overlays={"wet": "ovl/wet/", "dry": "az://c/ovl/dry/"}
    )
    runs = list(sweep.runs())
    assert len(sweep) == len(runs) == 4
    assert [(r.params["N"], r.params["OVERLAY"], r.overlay) for r in runs] == [
        ("1", "wet", "ovl/wet/"),
        ("1", "dry", "az://c/ovl/dry/"),
        ("2", "wet", "ovl/wet/"),
        ("2", "dry", "az://c/ovl/dry/"),
    ]
    assert runs[0].command == "run wet" and runs[0].env["OVERLAY"] == "wet"
    assert len({r.run_id for r in runs}) == 4


def test_overlays_alone_are_one_run_each() -> None:
    sweep = _model().sweep(overlays={"wet": "w/", "dry": "d/"})
    assert [dict(r.params) for r in sweep.runs()] == [{"OVERLAY": "wet"}, {"OVERLAY": "dry"}]


@pytest.mark.parametrize(
    ("params", "overlays", "match"),
    [
        (product(OVERLAY=["x"]), {"a": "a/"}, "named OVERLAY"),
        (None, {"../up": "a/"}, "overlay name"),
        (None, {"a": ""}, "empty"),
        (None, {"a": "gs://b/x"}, "unknown scheme"),
    ],
)
def test_bad_overlays(params: Params | None, overlays: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _model().sweep(params, overlays=overlays)


# -- records ----------------------------------------------------------------------------------


def test_sweep_round_trips_through_its_dict() -> None:
    model = _model(command="run {E}", env={"E": "1"})
    for params in (product(A=[1, 2], B=["x"]), sw.zip(A=[1, 2], B=["x", "y"]), None):
        sweep = model.sweep(params, overlays={"o": "o/"})
        again = Sweep.from_dict(sweep.to_dict())
        assert again == sweep and again.digest() == sweep.digest()
        assert [r.run_id for r in again.runs()] == [r.run_id for r in sweep.runs()]
    listed = model.sweep(listing([{"A": 1}, {"A": 2}]))
    assert Sweep.from_dict(listed.to_dict()).digest() == listed.digest()


def test_sweep_digest_changes_with_the_definition() -> None:
    model = _model(command="run")
    assert model.sweep(product(A=[1, 2])).digest() != model.sweep(product(A=[1, 3])).digest()
    assert (
        model.sweep(None, overlays={"a": "x/", "b": "y/"}).digest()
        == model.sweep(None, overlays={"b": "y/", "a": "x/"}).digest()
    )


def test_sweep_from_dict_refuses_unknown_keys() -> None:
    data = _model().sweep(product(A=[1])).to_dict()
    data["overlay"] = data.pop("overlays")
    with pytest.raises(ConfigError, match="Did you mean 'overlays'"):
        Sweep.from_dict(data)


def test_the_params_makers_moved_to_batch_params_still_import_from_sweep() -> None:
    from azmanagers import batch
    from azmanagers.batch import params

    names = ("MAX_AXIS_VALUES", "MAX_RUNS", "Params", "listing", "parse_axis", "product", "rows")
    for name in (*names, "zip"):
        assert getattr(sw, name) is getattr(params, name), name
    for name in ("listing", "product", "rows", "zip"):
        assert getattr(batch, name) is getattr(params, name), name
    assert sw.zip is not builtins.zip
