"""batch.MpiModel and batch.MasterWorker: checked fields, round trips, staging, cluster sizing."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from azmanagers import batch
from azmanagers.batch.api import prepare, submit
from azmanagers.batch.checks import canonical_json
from azmanagers.batch.gangplan import cluster_workers, with_companion
from azmanagers.batch.model import Model, Package
from azmanagers.batch.multinode import MasterWorker, MpiModel, launches_mpi
from azmanagers.batch.plan import Plan
from azmanagers.batch.records import JobStore
from azmanagers.batch.staging import InputRef
from azmanagers.batch.sweep import Sweep, product
from azmanagers.config.templates import save_template_scaleset
from azmanagers.errors import ConfigError
from azmanagers.storage import open_storage
from azmanagers.storage.spaces import job_space

WORKER_CMD = "pestpp-ies case.pst /h $AZM_MASTER_HOST:4004"


def _pest(**kwargs: object) -> MasterWorker:
    return MasterWorker(
        Model("pest-master", command="pestpp-ies case.pst /h :4004", env={"TOKEN": "s3cr3t"}),
        Model("pest-worker", command=WORKER_CMD),
        workers=kwargs.pop("workers", 3),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def _json(data: object) -> object:
    """What a job record gives back: the form after a JSON round trip."""
    return json.loads(json.dumps(data))


def test_exported_from_batch() -> None:
    assert batch.MpiModel is MpiModel and batch.MasterWorker is MasterWorker
    assert {"MpiModel", "MasterWorker"} <= set(batch.__all__)


def test_mpi_model_fields_and_defaults() -> None:
    m = MpiModel("schism", command="schism_mpi", nodes=4, inputs=["hgrid/"], timeout="2h")
    assert (m.nodes, m.ranks_per_node, m.coordination, m.library) == (4, 1, None, "mpich")
    assert (m.oversubscribe, m.node_wait_s, m.timeout_s, m.ranks) == (False, 600.0, 7200.0, 4)
    assert m.inputs == ("hgrid/",)
    m2 = MpiModel("x", command="c", nodes=2, ranks_per_node=3, mpi="OpenMPI", node_wait=30)
    assert (m2.library, m2.node_wait_s, m2.ranks) == ("openmpi", 30.0, 6)
    with pytest.raises(AttributeError, match="cannot be changed"):
        m.nodes = 5  # type: ignore[misc]


def test_mpi_round_trip_through_a_job_record() -> None:
    m = MpiModel(
        "schism",
        command="schism_mpi {CASE}",
        nodes=3,
        ranks_per_node=2,
        coordination="./prepare_node.sh {CASE}",
        mpi="mpich",
        oversubscribe=True,
        node_wait="5m",
        env={"K": "v"},
        packages=[Package("pest", "17")],
        outputs=["out/**:always"],
        retries=2,
    )
    sweep = m.sweep(product(CASE=["wet", "dry"]))
    again = Sweep.from_dict(_json(sweep.to_dict()))  # type: ignore[arg-type]
    assert type(again.model) is MpiModel and again.model == m
    assert again.digest() == sweep.digest() and again.model.digest() == m.digest()
    assert _json(m.to_dict())["mpi"] == {  # type: ignore[index]
        "nodes": 3,
        "ranks_per_node": 2,
        "coordination": "./prepare_node.sh {CASE}",
        "library": "mpich",
        "oversubscribe": True,
        "node_wait": 300.0,
    }
    assert type(Model.from_dict(m.to_dict())) is MpiModel


def test_digests_tell_models_apart_and_a_plain_model_keeps_its_form() -> None:
    plain = Model("m", command="run")
    # a plain model's digest is the one existing jobs were recorded with: no new keys
    assert set(plain.to_dict()) == {
        "name",
        "command",
        "inputs",
        "shared",
        "packages",
        "env",
        "outputs",
        "retries",
        "timeout",
    }
    assert plain.digest() == hashlib.sha256(canonical_json(plain.to_dict())).hexdigest()
    one = MpiModel("m", command="run", nodes=2)
    assert one.digest() != plain.digest() and one != plain
    assert one.digest() == MpiModel("m", command="run", nodes=2).digest()
    assert one.digest() != MpiModel("m", command="run", nodes=3).digest()
    assert hash(one) == hash(MpiModel("m", command="run", nodes=2))
    assert _pest().digest() != _pest(workers=4).digest()
    assert _pest().digest() == _pest().digest()


def test_reprs_name_env_variables_not_their_values() -> None:
    m = MpiModel("m", command="run", nodes=2, env={"API_KEY": "hunter2"})
    assert "hunter2" not in repr(m) and "API_KEY" in repr(m) and "nodes=2" in repr(m)
    assert repr(m).startswith("MpiModel('m', command='run'")
    text = repr(_pest())
    assert "s3cr3t" not in text and "TOKEN" in text and "workers=3" in text


def test_coordination_is_substituted_like_the_command() -> None:
    m = MpiModel("m", command="run {CASE}", nodes=2, coordination="prep {CASE} {{x}} ${HOME}")
    runs = list(m.sweep(product(CASE=["a b", "c"])).runs())
    assert [m.coordination_for(r) for r in runs] == [
        "prep 'a b' {x} ${HOME}",
        "prep c {x} ${HOME}",
    ]
    assert MpiModel("m", command="run", nodes=2).coordination_for(runs[0]) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nodes": 0}, r"nodes is 0; give at least 1"),
        ({"nodes": 1001}, r"nodes is 1001; at most 1000"),
        ({"nodes": True}, r"nodes must be a whole number from 1 to 1000, got True"),
        ({"nodes": "4"}, r"nodes must be a whole number .* got '4'"),
        ({"nodes": 2, "ranks_per_node": 0}, r"ranks_per_node is 0; give at least 1"),
        ({"nodes": 2, "mpi": "mpch"}, r"mpi='mpch' .*did you mean 'mpich'.*'mpich' or 'openmpi'"),
        ({"nodes": 2, "mpi": "intel"}, r"mpi='intel' is not an MPI library"),
        ({"nodes": 2, "oversubscribe": "yes"}, r"oversubscribe must be true or false, got 'yes'"),
        ({"nodes": 2, "node_wait": "0s"}, r"node_wait: duration '0s' is not a time > 0"),
        ({"nodes": 2, "coordination": "  "}, r"coordination is empty; give a command"),
        ({"nodes": 2, "coordination": 5}, r"coordination must be a string, got int 5"),
    ],
)
def test_bad_mpi_input_says_what_to_do(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        MpiModel("bad", command="run", **kwargs)  # type: ignore[arg-type]
    assert "MpiModel 'bad'" in str(info.value)


@pytest.mark.parametrize(
    ("mpi", "match"),
    [
        ("4", r"mpi must be a mapping such as"),
        ({"node": 4}, r"unknown key 'node' in the mpi of model 'm'. Did you mean 'nodes'"),
        ({"ranks_per_node": 2}, r"mpi has no nodes; give how many"),
        ({"nodes": 2, "library": "lam"}, r"mpi='lam' is not an MPI library"),
    ],
)
def test_bad_mpi_forms_are_refused(mpi: object, match: str) -> None:
    data = {**Model("m", command="run").to_dict(), "mpi": mpi}
    with pytest.raises(ConfigError, match=match):
        Model.from_dict(data)


def test_a_model_cannot_be_both_kinds() -> None:
    data = {**_pest().to_dict(), "mpi": {"nodes": 2}}
    with pytest.raises(ConfigError, match=r"both mpi and worker.*remove one"):
        Model.from_dict(data)


def test_master_worker_fields_are_the_masters() -> None:
    master = Model("pest-master", command="pestpp-ies case.pst /h :4004", inputs=["case/"])
    worker = Model("pest-worker", command=WORKER_CMD, inputs=["case/"])
    mw = MasterWorker(master, worker, workers=26, port=4004)
    assert (mw.name, mw.command, mw.inputs) == (master.name, master.command, master.inputs)
    assert mw.master == master and type(mw.master) is Model and mw.worker is worker
    assert (mw.workers, mw.port, mw.port_wait_s) == (26, 4004, 120.0)
    assert MasterWorker(master, worker, workers=1, port_wait=None).port_wait_s is None
    with pytest.raises(AttributeError, match="cannot be changed"):
        mw.workers = 3  # type: ignore[misc]


def test_master_worker_round_trip_without_a_second_warning() -> None:
    with pytest.warns(UserWarning, match="worker 'w'"):
        mw = MasterWorker(
            Model("m", command="master"), Model("w", command="work"), workers=2, port=9000
        )
    sweep = mw.sweep(product(CASE=["a", "b"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilding a recorded job warns no more
        again = Sweep.from_dict(_json(sweep.to_dict()))  # type: ignore[arg-type]
    assert type(again.model) is MasterWorker and again.model == mw
    assert again.digest() == sweep.digest()
    assert _json(mw.to_dict())["worker"] == Model("w", command="work").to_dict()  # type: ignore[index]
    assert {"workers": 2, "port": 9000, "port_wait": 120.0}.items() <= mw.to_dict().items()


def test_worker_sweep_has_the_masters_parameters() -> None:
    mw = MasterWorker(
        Model("m", command="master {CASE}"),
        Model("w", command="work {CASE} $AZM_MASTER_HOST"),
        workers=2,
    )
    sweep = mw.sweep(product(CASE=["a", "b"]), overlays={"wet": "ovl/wet/"})
    workers = mw.worker_sweep(sweep)
    assert workers.model == mw.worker and len(workers) == len(sweep) == 2
    assert [r.run_id for r in workers.runs()] == [r.run_id for r in sweep.runs()]
    assert next(r.command for r in workers.runs()) == "work a $AZM_MASTER_HOST"
    bad = MasterWorker(
        Model("m", command="m"), Model("w", command="w {NOPE} $AZM_MASTER_HOST"), workers=1
    )
    with pytest.raises(ConfigError, match=r"worker 'w': command: \{NOPE\} names no parameter"):
        bad.worker_sweep(bad.sweep())


def test_the_address_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _pest()  # $AZM_MASTER_HOST in the command
        MasterWorker(
            Model("m", command="m"),
            Model("w", command="work", env={"MASTER": "{AZ_BATCH_MASTER_NODE}x"}),
            workers=1,
        )
    with pytest.warns(UserWarning, match=r"neither \$AZM_MASTER_HOST nor \$AZ_BATCH_MASTER_NODE"):
        MasterWorker(Model("m", command="m"), Model("w", command="python w.py"), workers=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": 0}, r"workers is 0; give at least 1"),
        ({"workers": 1001}, r"workers is 1001; at most 1000"),
        ({"workers": 2.5}, r"workers must be a whole number from 1 to 1000, got 2.5"),
        ({"workers": 2, "port": 0}, r"port 0 is not a TCP port; give a whole number from 1"),
        ({"workers": 2, "port": 65536}, r"port 65536 is not a TCP port"),
        ({"workers": 2, "port": True}, r"port True is not a TCP port"),
        ({"workers": 2, "port": 80, "port_wait": "soon"}, r"port_wait: duration 'soon'"),
    ],
)
def test_bad_master_worker_input(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        MasterWorker(Model("m", command="m"), Model("w", command=WORKER_CMD), **kwargs)  # type: ignore[arg-type]
    assert "MasterWorker 'm'" in str(info.value)


def test_master_and_worker_are_plain_models() -> None:
    mpi = MpiModel("mpi", command="run", nodes=2)
    with pytest.raises(
        ConfigError, match=r"master must be a plain batch\.Model, got MpiModel 'mpi'"
    ):
        MasterWorker(mpi, Model("w", command=WORKER_CMD), workers=1)
    with pytest.raises(ConfigError, match=r"worker must be a plain batch\.Model, got str"):
        MasterWorker(Model("m", command="m"), "w", workers=1)  # type: ignore[arg-type]


def test_launches_mpi() -> None:
    assert launches_mpi("mpiexec -n 4 ./a") and launches_mpi("cd x && mpirun ./a")
    assert not launches_mpi("./schism_mpi") and not launches_mpi("mympiexec")


# --- the job API: cluster sizing, staging and the companion plan ---------------------------


def test_cluster_workers_for_a_cluster_made_for_the_job() -> None:
    plain = Model("m", command="run")
    assert cluster_workers(plain, None, None) is None
    assert cluster_workers(MpiModel("m", command="c", nodes=3), None, None) == 3
    assert cluster_workers(MpiModel("m", command="c", nodes=1), None, None) == 2
    assert cluster_workers(MpiModel("m", command="c", nodes=3), "local", 5) == 5
    assert cluster_workers(_pest(workers=4), None, None) == 5
    assert cluster_workers(_pest(workers=4), None, 2) == 2  # --workers says otherwise
    with pytest.raises(ConfigError, match=r"needs 3 nodes per run; the cluster gets 2 workers: "):
        cluster_workers(MpiModel("m", command="c", nodes=3), None, 2)
    # an existing cluster (a Client, an AzCluster) is checked by the driver at run time
    assert cluster_workers(MpiModel("m", command="c", nodes=3), object(), 2) == 2


def test_cluster_workers_respect_the_templates_limit() -> None:
    save_template_scaleset("small", {"provider": "local", "max_instances": 3})
    with pytest.raises(ConfigError, match=r"needs 4 nodes; template 'small' allows at most 3"):
        cluster_workers(MpiModel("m", command="c", nodes=4), "small", None)
    with pytest.raises(ConfigError, match=r"pass workers=3 \(--workers 3\)"):
        cluster_workers(_pest(workers=3), "small", None)
    assert cluster_workers(_pest(workers=2), "small", None) == 3
    with pytest.raises(ConfigError, match="nosuch"):
        cluster_workers(MpiModel("m", command="c", nodes=2), "nosuch", None)


def test_submit_refuses_too_few_workers_before_staging(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (tmp_path / "in.txt").write_text("x")
    model = MpiModel("m", command="c", nodes=3, inputs=["in.txt"])
    with pytest.raises(ConfigError, match="pass workers=3 or more"):
        submit(model, name="j", storage=runs.as_uri(), workers=2, base=tmp_path)
    assert not runs.exists() or not any(runs.rglob("*"))


def _case(tmp_path: Path) -> Path:
    for rel, text in {
        "case/case.pst": "pst",
        "case/obs.dat": "obs",
        "tables/big.dat": "table",
        "pkg/bin/tool": "#!/bin/sh\n",
        "work.cfg": "cfg",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def _mw_sweep() -> Sweep:
    mw = MasterWorker(
        Model("pest-master", command="pestpp-ies case.pst /h :4004", inputs=["case/"]),
        Model(
            "pest-worker",
            command=WORKER_CMD + " {CASE}",
            inputs=["case/", "work.cfg"],
            shared=["tables/"],
            packages=[Package("tool", "1.0", "pkg/")],
        ),
        workers=2,
        port=4004,
    )
    return mw.sweep(product(CASE=["a", "b"]))


def test_prepare_stages_the_worker_and_fills_the_companion(tmp_path: Path) -> None:
    base = _case(tmp_path)
    storage = (tmp_path / "runs").as_uri()
    sweep = _mw_sweep()
    _space, store, plan = prepare(sweep, name="calib", storage=storage, cluster=None, base=base)
    model = sweep.model
    assert isinstance(model, MasterWorker)
    companion = plan.companion
    assert companion is not None and companion.companion is None
    assert companion.sweep.model == model.worker and len(companion.sweep) == 2
    assert (companion.job, companion.prefix, companion.session, companion.root) == (
        plan.job,
        plan.prefix,
        plan.session,
        plan.root,
    )
    assert plan.shared == () and plan.packages == ()  # the master has none
    assert [r.source for r in companion.shared] == ["tables/"]
    assert [(p.name, p.version) for p in companion.packages] == [("tool", "1.0")]
    assert {"case/", "work.cfg", "tables/", "package:tool:1.0"} <= set(plan.refs)
    record = store.read_job()
    assert record is not None
    rebuilt = Sweep.from_dict(record.definition)
    assert rebuilt.model == model
    # the worker's tasks find every input of theirs among the job's staged refs
    from azmanagers.storage.base import Grant

    grant = Grant(url=storage, prefix=plan.prefix, expires_at=0.0, write=False)  # not opened
    for spec in companion.sweep.runs():
        task = companion.task(spec, 1, grant, plan.session)
        assert [i.source for i in task.inputs] == ["case/", "work.cfg"]
        assert "{CASE}" not in task.command and task.command.endswith(("a", "b"))
    # what resubmit does from the record gives the same companion
    refs = {k: InputRef.from_dict(v) for k, v in record.inputs.items()}
    again = with_companion(Plan("calib", plan.prefix, rebuilt, refs, (), (), plan.session))
    assert again.companion is not None
    assert again.companion.shared == companion.shared
    assert again.companion.packages == companion.packages


def test_the_job_digest_covers_the_workers_inputs(tmp_path: Path) -> None:
    base = _case(tmp_path)
    storage = (tmp_path / "runs").as_uri()
    prepare(_mw_sweep(), name="calib", storage=storage, cluster=None, base=base)
    # the same definition and inputs: the same job (resumable)
    prepare(_mw_sweep(), name="calib", storage=storage, cluster=None, base=base)
    (base / "work.cfg").write_text("changed")  # only the worker uses it
    with pytest.raises(ConfigError, match="different model, sweep or input contents"):
        prepare(_mw_sweep(), name="calib", storage=storage, cluster=None, base=base)


def test_prepare_checks_each_runs_coordination(tmp_path: Path) -> None:
    storage = (tmp_path / "runs").as_uri()
    model = MpiModel("m", command="run {CASE}", nodes=2, coordination="prep {CAS}")
    with pytest.raises(ConfigError, match=r"\{CAS\} names no parameter"):
        prepare(
            model.sweep(product(CASE=["a"])), name="j", storage=storage, cluster=None, base=tmp_path
        )
    opened = open_storage(storage)
    assert JobStore(job_space(opened, "j", create=False), "j").read_job() is None


def test_a_plain_models_plan_has_no_companion(tmp_path: Path) -> None:
    storage = (tmp_path / "runs").as_uri()
    _, _, plan = prepare(
        Model("m", command="run"), name="j", storage=storage, cluster=None, base=tmp_path
    )
    assert plan.companion is None
    _, _, mpi_plan = prepare(
        MpiModel("m", command="run", nodes=2),
        name="k",
        storage=storage,
        cluster=None,
        base=tmp_path,
    )
    assert mpi_plan.companion is None and type(mpi_plan.sweep.model) is MpiModel


def test_more_ranks_per_node_than_this_machines_cores_is_refused_for_a_local_cluster() -> None:
    import os

    cores = os.cpu_count() or 1
    model = MpiModel("wide", command="true", nodes=2, ranks_per_node=cores + 1)
    with pytest.raises(ConfigError, match=rf"ranks_per_node={cores + 1} is more than the {cores}"):
        cluster_workers(model, None, None)
    wide = MpiModel("wide", command="true", nodes=2, ranks_per_node=cores + 1, oversubscribe=True)
    assert cluster_workers(wide, None, None) == 2
