"""YAML specs of multi-node jobs: ``mpi:`` and ``master:``/``worker:``/``workers:``/``port:``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from azmanagers.batch.model import Model
from azmanagers.batch.multinode import MasterWorker, MpiModel
from azmanagers.batch.spec import load_spec
from azmanagers.batch.sweep import Sweep
from azmanagers.cli.batch_output import one_line_model
from azmanagers.errors import ConfigError


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MPI = """\
name: bay-2026
command: schism_mpi {CASE}
inputs: [hgrid/]
shared: [tables/]
env: {MODE: wet}
sweep:
  product: {CASE: [wet, dry]}
mpi:
  nodes: 4
  ranks_per_node: 120
  coordination: ./prepare_node.sh {CASE}
  library: mpich
  oversubscribe: true
  node_wait: 5m
workers: 8
timeout: 2h
"""

PEST = """\
name: calib
master:
  command: pestpp-ies case.pst /h :4004
  inputs: [case/]
worker:
  name: helper
  command: pestpp-ies case.pst /h $AZM_MASTER_HOST:4004
  inputs: [case/]
  shared: [bin/]
  packages:
    - {name: pest, version: "17.3", path: dist/pest/}
workers: 26
port: 4004
port_wait: 30s
cluster: myscaleset
"""


def test_an_mpi_spec(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "study", MPI))
    model = spec.sweep.model
    base = (tmp_path / "study").resolve()
    assert isinstance(model, MpiModel) and model.name == spec.name == "bay-2026"
    assert (model.nodes, model.ranks_per_node, model.library) == (4, 120, "mpich")
    assert (model.oversubscribe, model.node_wait_s, model.timeout_s) == (True, 300.0, 7200.0)
    assert model.coordination == "./prepare_node.sh {CASE}"
    assert model.inputs == (f"{base}/hgrid/",) and model.shared == (f"{base}/tables/",)
    assert spec.workers == 8 and len(spec.sweep) == 2  # workers: the cluster's, as before
    runs = list(spec.sweep.runs())
    assert [model.coordination_for(r) for r in runs] == [
        "./prepare_node.sh wet",
        "./prepare_node.sh dry",
    ]


def test_an_mpi_spec_with_defaults(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, "name: m\ncommand: mpiexec ./a\nmpi: {nodes: 2}\n"))
    model = spec.sweep.model
    assert isinstance(model, MpiModel)
    assert (model.nodes, model.ranks_per_node, model.coordination) == (2, 1, None)
    assert (model.library, model.oversubscribe, model.node_wait_s) == ("mpich", False, 600.0)
    assert spec.workers is None


def test_a_master_worker_spec(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path / "pest", PEST))
    base = (tmp_path / "pest").resolve()
    model = spec.sweep.model
    assert isinstance(model, MasterWorker)
    assert spec.name == "calib" and spec.cluster == "myscaleset"
    assert spec.workers is None  # the cluster gets workers + 1 nodes unless --workers says
    assert (model.workers, model.port, model.port_wait_s) == (26, 4004, 30.0)
    assert model.master.name == "calib-master" and model.worker.name == "helper"
    assert model.command == "pestpp-ies case.pst /h :4004"
    assert model.inputs == (f"{base}/case/",)
    assert model.worker.shared == (f"{base}/bin/",)
    assert model.worker.packages[0].path == f"{base}/dist/pest/"
    assert model.worker.packages[0].version == "17.3"


def test_port_wait_defaults_and_null(tmp_path: Path) -> None:
    text = PEST.replace("port_wait: 30s\n", "")
    model = load_spec(_write(tmp_path / "a", text)).sweep.model
    assert isinstance(model, MasterWorker) and model.port_wait_s == 120.0
    model = load_spec(_write(tmp_path / "b", text + "port_wait: null\n")).sweep.model
    assert isinstance(model, MasterWorker) and model.port_wait_s is None


def test_specs_round_trip_through_a_job_record(tmp_path: Path) -> None:
    for i, text in enumerate((MPI, PEST)):
        sweep = load_spec(_write(tmp_path / str(i), text)).sweep
        again = Sweep.from_dict(json.loads(json.dumps(sweep.to_dict())))
        assert type(again.model) is type(sweep.model) and again.model == sweep.model
        assert again.digest() == sweep.digest()


def test_the_same_spec_gives_the_same_digest(tmp_path: Path) -> None:
    one = load_spec(_write(tmp_path / "one", PEST)).sweep
    two = load_spec(_write(tmp_path / "one", PEST)).sweep
    assert one.digest() == two.digest()
    three = load_spec(_write(tmp_path / "one", PEST.replace("workers: 26", "workers: 25")))
    assert three.sweep.digest() != one.digest()


def test_a_worker_without_the_masters_address_warns(tmp_path: Path) -> None:
    text = PEST.replace("/h $AZM_MASTER_HOST:4004", "/h localhost:4004")
    with pytest.warns(UserWarning, match=r"worker 'helper'.*\$AZM_MASTER_HOST"):
        spec = load_spec(_write(tmp_path, text))
    assert isinstance(spec.sweep.model, MasterWorker)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_spec(_write(tmp_path / "ok", PEST))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            PEST + "command: run\ninputs: [x]\n",
            r"with master: and worker:, 'command', 'inputs' belong under master: or worker:",
        ),
        (PEST + "mpi: {nodes: 2}\n", r"'mpi' belong under master: or worker:"),
        (PEST.replace("worker:\n  name: helper", "helper:\n  name: helper"), "unknown key"),
        (
            "name: c\nmaster: {command: m}\nworkers: 2\n",
            r"worker: must be a model mapping .* gives both master: and worker:",
        ),
        (PEST.replace("workers: 26\n", ""), r"needs workers: \(how many worker runs\)"),
        (PEST.replace("workers: 26", "workers: 0"), r"workers must be a whole number >= 1, got 0"),
        (PEST.replace("port: 4004", "port: 70000"), r"port 70000 is not a TCP port"),
        (PEST.replace("port_wait: 30s", "port_wait: [1]"), r"port_wait must be seconds"),
        (
            PEST.replace("  inputs: [case/]\nworker:", "  inptus: [case/]\nworker:"),
            r"unknown key 'inptus' in master:. Did you mean 'inputs'\?",
        ),
        (
            PEST.replace("  command: pestpp-ies case.pst /h :4004\n", "  inputs: [x]\n", 1),
            r"master: has no 'command'; give one",
        ),
        (
            PEST.replace("$AZM_MASTER_HOST:4004", "$AZM_MASTER_HOST:{PORT}"),
            r"worker 'helper': command: \{PORT\} names no parameter",
        ),
        ("name: m\ncommand: c\nmpi: 4\n", r"mpi must be a mapping such as"),
        ("name: m\ncommand: c\nmpi: {nodes: 0}\n", r"nodes is 0; give at least 1"),
        ("name: m\ncommand: c\nmpi: {nodes: 2, lib: x}\n", r"unknown key 'lib' in the mpi"),
        ("name: m\ncommand: c\nmpi: {nodes: 2, library: lam}\n", r"mpi='lam' is not an MPI"),
        ("name: m\ncommand: c\nmpi: {ranks_per_node: 2}\n", r"mpi has no nodes"),
        ("name: m\nmpi: {nodes: 2}\n", r"the spec has no 'command'; give one"),
    ],
)
def test_bad_multinode_specs_say_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ConfigError, match=match) as info:
            load_spec(path)
    assert str(path) in str(info.value)  # the spec is named in every error


def test_plain_specs_and_the_one_line_form_are_unchanged(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, "name: p\ncommand: run\nworkers: 3\n"))
    assert type(spec.sweep.model) is Model and spec.workers == 3
    made = one_line_model(
        "hydro",
        "run {N}",
        inputs=None,
        shared=None,
        env=None,
        sweep=["N=1..3"],
        outputs=None,
        packages=None,
        retries=0,
        timeout=None,
    )
    assert isinstance(made, Sweep) and type(made.model) is Model and len(made) == 3


def test_an_empty_mpi_and_a_port_wait_without_a_port_are_refused(tmp_path: Path) -> None:
    from azmanagers.batch.spec import load_spec

    empty = tmp_path / "empty.yaml"
    empty.write_text("name: j\ncommand: ./run\nmpi:\n")
    with pytest.raises(ConfigError, match="mpi must be a mapping"):
        load_spec(empty)
    portless = tmp_path / "portless.yaml"
    portless.write_text(
        "name: j\nmaster: {command: m}\nworker: {command: w $AZM_MASTER_HOST}\n"
        "workers: 2\nport_wait: 30s\n"
    )
    with pytest.raises(ConfigError, match="no port: is given"):
        load_spec(portless)
