"""batch.model: Model, Output, Package, durations and run-dir path safety."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from azmanagers.batch.model import (
    WHEN,
    Model,
    Output,
    Package,
    check_relative,
    check_source,
    parse_duration,
)
from azmanagers.errors import ConfigError

SAFE_PART = st.from_regex(r"[A-Za-z0-9_*?\[\]-][A-Za-z0-9_.*?\[\]-]{0,8}", fullmatch=True).filter(
    lambda p: p not in (".", "..")
)


def _model(**kwargs: object) -> Model:
    base: dict[str, object] = {"command": "./run.sh"}
    base.update(kwargs)
    return Model("hydro", **base)  # type: ignore[arg-type]


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        (" 2H ", 7200.0),
        (".5m", 30.0),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_reads_units(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "2x", "h", "-5", "0", "0s", "2h-", "1e3", "inf", "nan", 0, -1, True, float("nan")]
)
def test_parse_duration_refuses_what_is_not_a_time(bad: object) -> None:
    with pytest.raises(ConfigError, match="not a time > 0"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_parse_duration_refuses_an_overflowing_number() -> None:
    with pytest.raises(ConfigError):
        parse_duration("9" * 400 + "d")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
)
def test_parse_duration_sums_its_parts(d: int, h: int, m: int, s: int) -> None:
    total = d * 86400 + h * 3600 + m * 60 + s
    text = "".join(f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v)
    if total == 0:
        return
    assert parse_duration(text) == float(total)


# -- path safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("output/**", "output/**"),
        ("*.log", "*.log"),
        ("**/*.nc", "**/*.nc"),
        ("./out//x[0-9].txt", "out/x[0-9].txt"),
        ("out/run?.dat", "out/run?.dat"),
        ("..hidden", "..hidden"),
        ("a/...", "a/..."),
    ],
)
def test_check_relative_accepts_safe_globs(path: str, normal: str) -> None:
    assert check_relative(path, what="output") == normal


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("~/x", "absolute"),
        ("C:/x", "absolute"),
        ("../x", r"'\.\.' part"),
        ("out/../../x", r"'\.\.' part"),
        ("out/..", r"'\.\.' part"),
        ("a\\b", "backslash"),
        ("a\0b", "NUL"),
        ("", "names no file"),
        ("./", "names no file"),
    ],
)
def test_check_relative_refuses_escapes(path: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        check_relative(path, what="output pattern")
    assert "output pattern" in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.lists(SAFE_PART, min_size=1, max_size=5))
def test_check_relative_keeps_safe_paths_inside(parts: list[str]) -> None:
    path = "/".join(parts)
    assert check_relative(path, what="x") == path


@settings(max_examples=300, deadline=None)
@given(
    st.lists(SAFE_PART, max_size=3),
    st.lists(SAFE_PART, max_size=3),
    st.sampled_from(["..", "/", "\\"]),
)
def test_check_relative_refuses_anything_with_dotdot_or_absolute(
    before: list[str], after: list[str], poison: str
) -> None:
    if poison == "..":
        path = "/".join([*before, "..", *after])
    elif poison == "/":
        path = "/" + "/".join([*before, *after])
    else:
        path = "/".join([*before, "x\\y", *after])
    with pytest.raises(ConfigError):
        check_relative(path, what="x")


# -- Output and Package -----------------------------------------------------------------------


def test_output_parse_reads_the_condition() -> None:
    assert Output.parse("out/**:always") == Output("out/**", "always")
    assert Output.parse("out/**") == Output("out/**", "success")
    assert Output.parse("*.log:FAILURE") == Output("*.log", "failure")
    assert Output.parse("data/x:y.txt") == Output("data/x:y.txt", "success")


def test_output_refuses_an_unknown_condition_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'always'"):
        Output.parse("out/**:alwys")
    with pytest.raises(ConfigError, match="success, failure, always"):
        Output("x", "sometimes")


def test_output_refuses_patterns_that_escape() -> None:
    with pytest.raises(ConfigError, match="leaves the run directory"):
        Output.parse("../std*.txt:always")


def test_package_env_name_is_batch_style() -> None:
    assert Package("dsm2", "8.2").env_name == "AZ_BATCH_APP_PACKAGE_dsm2_8_2"
    assert Package("My-App", "1.0-rc1").env_name == "AZ_BATCH_APP_PACKAGE_my_app_1_0_rc1"


@pytest.mark.parametrize(
    ("name", "version"), [("", "1"), ("a b", "1"), ("a", "x/y"), ("a" * 65, "1"), ("a", "")]
)
def test_package_refuses_bad_names(name: str, version: str) -> None:
    with pytest.raises(ConfigError, match="package"):
        Package(name, version)


def test_package_refuses_an_archive_we_do_not_unpack() -> None:
    Package("a", "1", "dist/a.tar.gz")
    Package("a", "1", "dist/a/")
    with pytest.raises(ConfigError, match=r"\.tar\.gz"):
        Package("a", "1", "dist/a.rar")
    with pytest.raises(ConfigError, match="unknown scheme 'https'"):
        Package("a", "1", "https://example.invalid/a.zip")


# -- Model ------------------------------------------------------------------------------------


def test_model_holds_checked_values() -> None:
    model = Model(
        "hydro",
        command="./bin/hydro run.inp",
        inputs=["study/", "run.inp", "az://runs/in/x.h5"],
        shared=["tables/big.h5"],
        packages=[Package("dsm2", "8.2", "dist/dsm2-8.2.tar.gz")],
        env={"MODE": "historical", "THREADS": 4},
        outputs=[Output("output/**"), "*.log:always"],
        retries=1,
        timeout="2h",
    )
    assert model.inputs == ("study/", "run.inp", "az://runs/in/x.h5")
    assert model.env == {"MODE": "historical", "THREADS": "4"}
    assert model.outputs == (Output("output/**"), Output("*.log", "always"))
    assert model.timeout_s == 7200.0
    with pytest.raises(TypeError):
        model.env["MODE"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError, match="cannot be changed"):
        model.retries = 3  # type: ignore[misc]


def test_model_round_trips_and_digest_is_stable() -> None:
    model = _model(env={"B": "2", "A": "1"}, outputs=["o/*:failure"], timeout=90, retries=2)
    same = _model(env={"A": "1", "B": "2"}, outputs=["o/*:failure"], timeout="90s", retries=2)
    again = Model.from_dict(model.to_dict())
    assert again == model and again.to_dict() == model.to_dict()
    assert model.digest() == same.digest() == again.digest()
    assert _model(retries=3).digest() != model.digest()
    assert hash(model) == hash(same)


def test_model_repr_hides_env_values() -> None:
    assert "s3cr3t" not in repr(_model(env={"TOKEN": "s3cr3t"}))
    assert "TOKEN" in repr(_model(env={"TOKEN": "s3cr3t"}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"command": ""}, "has no command"),
        ({"command": "a\0b"}, "NUL"),
        ({"inputs": "study/"}, "list of paths"),
        ({"inputs": ["a", "a"]}, "twice"),
        ({"inputs": ["s3://bucket/x"]}, "unknown scheme 's3'"),
        ({"shared": [""]}, "empty"),
        ({"env": {"AZM_X": "1"}}, "starts with AZM_"),
        ({"env": {"az_batch_task_id": "1"}}, "runner sets"),
        ({"env": {"1X": "1"}}, "not a variable name"),
        ({"env": {"X": True}}, "give text"),
        ({"env": {"X": None}}, "give text"),
        ({"packages": [("a", "1")]}, "batch.Package"),
        ({"packages": [Package("a", "1"), Package("a", "1")]}, "twice"),
        ({"outputs": ["../x"]}, r"'\.\.' part"),
        ({"outputs": ["x", "x"]}, "twice"),
        ({"retries": -1}, "retries"),
        ({"retries": True}, "retries"),
        ({"retries": 1000}, "more than"),
        ({"timeout": "soon"}, "not a time"),
    ],
)
def test_model_bad_input_says_what_is_wrong(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _model(**kwargs)


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, "ü"])
def test_model_refuses_bad_names(name: str) -> None:
    with pytest.raises(ConfigError, match="model name"):
        Model(name, command="true")


def test_model_from_dict_suggests_the_close_key() -> None:
    data = _model().to_dict()
    data["retry"] = data.pop("retries")
    with pytest.raises(ConfigError, match="Did you mean 'retries'"):
        Model.from_dict(data)
    with pytest.raises(ConfigError, match="no 'command'"):
        Model.from_dict({"name": "x"})


def test_check_source_tells_urls_from_paths() -> None:
    assert check_source("file:///data/x", what="input") == "file:///data/x"
    assert check_source("rel/x", what="input") == "rel/x"
    with pytest.raises(ConfigError, match="unknown scheme 'http'"):
        check_source("http://x/y", what="input")


def test_when_values_are_the_batch_conditions() -> None:
    assert WHEN == ("success", "failure", "always")


def test_the_checks_moved_to_batch_checks_still_import_from_model() -> None:
    from azmanagers.batch import checks, model

    names = (
        "RESERVED_PREFIXES",
        "URL_SCHEMES",
        "canonical_json",
        "check_relative",
        "check_source",
        "check_text",
        "is_url",
        "parse_duration",
        "unknown_key",
    )
    for name in names:
        assert getattr(model, name) is getattr(checks, name), name
