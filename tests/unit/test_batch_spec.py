"""batch.spec: YAML job specs read from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from azmanagers.batch.model import Output, Package
from azmanagers.batch.spec import KEYS, load_spec, spec_from_mapping
from azmanagers.errors import ConfigError


def _write(folder: Path, text: str, name: str = "job.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


FULL = """\
name: ptm
command: ./bin/ptm {CASE}.inp
inputs: [study/, run.inp, "az://runs/in/x.h5", ~/home.txt]
shared: [tables/big.h5]
packages:
  - {name: dsm2, version: "8.10", path: dist/dsm2.tar.gz}
  - {name: pest, version: 17}
env: {MODE: historical, THREADS: 4}
sweep:
  product: {RUN_NO: "1..3", CASE: [a, b]}
  overlays: {wet: ovl/wet/}
outputs:
  - "output/**"
  - "*.log:always"
  - {pattern: "err/*", when: failure}
retries: 2
timeout: 1h30m
cluster: myscaleset
workers: 20
storage: az://runs/ptm
"""


def test_a_full_spec(tmp_path: Path) -> None:
    folder = tmp_path / "study dir"
    spec = load_spec(_write(folder, FULL))
    base = folder.resolve()
    model = spec.sweep.model
    assert spec.name == "ptm" and model.name == "ptm"
    assert (spec.cluster, spec.workers, spec.storage, spec.base) == (
        "myscaleset",
        20,
        "az://runs/ptm",
        base,
    )
    assert model.inputs == (
        f"{base}/study/",
        f"{base}/run.inp",
        "az://runs/in/x.h5",
        str(Path("~/home.txt").expanduser()),
    )
    assert model.shared == (f"{base}/tables/big.h5",)
    assert model.packages == (
        Package("dsm2", "8.10", f"{base}/dist/dsm2.tar.gz"),
        Package("pest", "17"),
    )
    assert model.env == {"MODE": "historical", "THREADS": "4"}
    assert model.outputs == (
        Output("output/**"),
        Output("*.log", "always"),
        Output("err/*", "failure"),
    )
    assert (model.retries, model.timeout_s) == (2, 5400.0)
    runs = list(spec.sweep.runs())
    assert len(spec.sweep) == len(runs) == 6
    assert runs[0].command == "./bin/ptm a.inp"
    assert runs[0].params == {"RUN_NO": "1", "CASE": "a", "OVERLAY": "wet"}
    assert runs[0].overlay == f"{base}/ovl/wet/"


def test_a_plain_model_is_one_run(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, "name: one\ncommand: ./run.sh\ninputs: data/\n"))
    assert len(spec.sweep) == 1 and spec.sweep.params is None
    assert spec.sweep.model.inputs == (f"{tmp_path.resolve()}/data/",)
    assert (spec.cluster, spec.workers, spec.storage) == (None, None, None)


def test_parent_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "a" / "b", "name: x\ncommand: c\ninputs: [../in.txt]\n"))
    assert spec.sweep.model.inputs == (f"{(tmp_path / 'a').resolve()}/in.txt",)


def test_sweep_forms(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("A,B\n1,x\n2,y\n", encoding="utf-8")
    head = "name: x\ncommand: run {A}\nsweep:\n"
    forms = {
        "  zip: {A: [1, 2], B: 'x,y'}\n": [{"A": "1", "B": "x"}, {"A": "2", "B": "y"}],
        "  rows: p.csv\n": [{"A": "1", "B": "x"}, {"A": "2", "B": "y"}],
        "  list: [{A: 1}, {A: 2.5}]\n": [{"A": "1"}, {"A": "2.5"}],
        "  product: {A: '1..4..2'}\n": [{"A": "1"}, {"A": "3"}],
    }
    for body, expected in forms.items():
        spec = load_spec(_write(tmp_path, head + body))
        assert [dict(r.params) for r in spec.sweep.runs()] == expected, body
    spec = load_spec(_write(tmp_path, "name: x\ncommand: c\nsweep:\n  overlays: {o: dir/}\n"))
    assert [r.overlay for r in spec.sweep.runs()] == [f"{tmp_path.resolve()}/dir/"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "name: x\ncommand: c\nretry: 1\n",
            "unknown key 'retry' in the spec. Did you mean 'retries'",
        ),
        ("name: x\ncommand: c\nsweep: {prodcut: {A: [1]}}\n", "Did you mean 'product'"),
        ("name: x\ncommand: c\npackages: [{name: a, versoin: '1'}]\n", "Did you mean 'version'"),
        ("name: x\ncommand: c\noutputs: [{pattern: a, wen: always}]\n", "Did you mean 'when'"),
        ("name: x\n", "no 'command'"),
        ("command: c\n", "no 'name'"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: x\ncommand: c\nsweep: {product: {A: 5}}\n", "give a list"),
        ("name: x\ncommand: c\nsweep: {product: {A: [1]}, zip: {B: [1]}}\n", "give one of them"),
        ("name: x\ncommand: c\nsweep: {}\n", "sweep is empty"),
        ("name: x\ncommand: c\nsweep: {zip: {A: [1, 2], B: [1]}}\n", "A has 2 values but B"),
        ("name: x\ncommand: c\nsweep: {list: []}\n", "empty"),
        ("name: x\ncommand: c\nsweep: {rows: none.csv}\n", r"none\.csv.*does not exist"),
        ("name: x\ncommand: c {Z}\n", r"\{Z\} names no parameter"),
        ("name: x\ncommand: c\noutputs: ['../out/*']\n", "leaves the run directory"),
        ("name: x\ncommand: c\nsweep: {overlays: {'../o': d/}}\n", "overlay name"),
        ("name: x\ncommand: c\npackages: [{name: a, version: 8.10}]\n", "in quotes"),
        ("name: x\ncommand: c\nenv: {FLAG: yes}\n", "give text"),
        ("name: x\ncommand: c\nworkers: 0\n", "workers must be a whole number >= 1"),
        ("name: x\ncommand: c\nworkers: true\n", "workers"),
        ("name: x\ncommand: c\ntimeout: soon\n", "not a time"),
        ("name: x\ncommand: c\ninputs: [s3://b/k]\n", "unknown scheme"),
        ("name: x\ncommand: c\ncluster: ''\n", "cluster must be non-empty"),
        ("name: x\ncommand: c\nshared: ['']\n", "empty"),
        ("name: 'a b'\ncommand: c\n", "model name"),
        ("name: x\ncommand: [\n", "not valid YAML"),
    ],
)
def test_bad_specs_say_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_spec(path)
    assert "job.yaml" in str(info.value)


def test_unknown_keys_list_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec(_write(tmp_path, "name: x\ncommand: c\nzzz: 1\n"))
    assert "Did you mean" not in str(info.value)
    assert ", ".join(sorted(KEYS)) in str(info.value)


def test_a_missing_spec_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.yaml.*does not exist"):
        load_spec(tmp_path / "nothere.yaml")


def test_yaml_is_data_only(tmp_path: Path) -> None:
    text = "name: x\ncommand: !!python/object/apply:os.system ['touch pwned']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(_write(tmp_path, text))
    assert not (tmp_path / "pwned").exists()


def test_spec_from_mapping_names_its_source(tmp_path: Path) -> None:
    spec = spec_from_mapping(
        {"name": "x", "command": "c", "inputs": ["in/"]}, base=tmp_path, source="--command"
    )
    assert spec.sweep.model.inputs == (f"{tmp_path.resolve()}/in/",)
    with pytest.raises(ConfigError, match=r"^--command: unknown key"):
        spec_from_mapping(
            {"name": "x", "command": "c", "bogus": 1}, base=tmp_path, source="--command"
        )


def test_the_same_spec_gives_the_same_digest(tmp_path: Path) -> None:
    first = load_spec(_write(tmp_path, FULL)).sweep.digest()
    reordered = FULL.replace(
        "env: {MODE: historical, THREADS: 4}", "env: {THREADS: 4, MODE: historical}"
    )
    assert load_spec(_write(tmp_path, reordered)).sweep.digest() == first
