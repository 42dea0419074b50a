"""A batch sweep on an azure template (the emulator) with Blob storage (Azurite)."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import psutil
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from azmanagers import batch
from azmanagers.emulator import Emulator
from azmanagers.errors import ConfigError
from azmanagers.storage import open_storage
from azmanagers.storage.spaces import job_space
from tests.conftest import processes_under

pytestmark = pytest.mark.integration
DEADLINE_S = 120.0


def test_a_sweep_on_an_azure_template_with_blob_storage_and_a_scoped_credential(
    emulated_azure: Emulator, azurite: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AZMANAGERS_STORAGE_CONNECTION_STRING", azurite)
    container = f"runs-{uuid.uuid4().hex[:8]}"
    (tmp_path / "case").mkdir()
    (tmp_path / "case" / "deck.inp").write_text("deck\n")
    model = batch.Model(
        "hydro",
        command='cat case/deck.inp > out.txt; echo "run $RUN_NO on $AZ_BATCH_NODE_ID" >> out.txt',
        inputs=[str(tmp_path / "case")],
        outputs=[batch.Output("out.txt")],
    )
    seen_env: list[str] = []

    def progress(counts: object, total: int) -> None:
        for proc in processes_under(tmp_path / "emulator"):
            with contextlib.suppress(psutil.Error):
                seen_env.extend(f"{k}={v}" for k, v in proc.environ().items())

    job = batch.submit(
        model.sweep(batch.product(RUN_NO=range(4))),
        name="ptm",
        storage=f"az://{container}",
        cluster="myscaleset",
        workers=2,
        progress=progress,
        wait=True,
        timeout=DEADLINE_S,
    )
    assert job.status().status == "succeeded", job.runs()
    space = job.url.removeprefix("az://")
    assert space.startswith("azm-ptm-") and space != container  # the job's own container
    runs = job.runs()
    assert len(runs) == 4 and all(r.node.startswith("myscaleset") or r.node for r in runs)
    for r in runs:
        text = job.storage.get_bytes(r.outputs[0].key).decode()
        assert text.startswith("deck\nrun ") and r.outputs[0].url.startswith(f"az://{space}/")
    # no account key reached a VM: the workers got a SAS
    assert seen_env and not [e for e in seen_env if "AccountKey" in e or "devstoreaccount1:" in e]
    # found again from the root, by the container's metadata, from a fresh handle
    assert [s.name for s in batch.jobs(f"az://{container}")] == ["ptm"]
    assert batch.attach("ptm", storage=f"az://{container}").status().counts["succeeded"] == 4

    # the credential the workers got: the job's container, read/write, no delete, expiring
    assert job._local is not None
    grant = job._local.driver._grant
    assert grant is not None and grant.prefix == "" and grant.token
    assert "AccountKey" not in repr(grant) and grant.token not in repr(grant)
    scoped = ContainerClient(grant.endpoint, space, credential=grant.token)
    scoped.upload_blob("runs/extra.txt", b"ok", overwrite=True)
    assert scoped.download_blob("runs/extra.txt").readall() == b"ok"
    with pytest.raises(HttpResponseError) as refused:
        scoped.delete_blob("runs/extra.txt")
    assert refused.value.status_code == 403
    # and nothing else: not another job of the same root, not the root's own container
    root = open_storage(f"az://{container}")
    other = job_space(root, "other-job", create=True)
    other.put_bytes("job.json", b"{}")
    for elsewhere in (other.url.removeprefix("az://"), container):
        raw = ContainerClient(grant.endpoint, elsewhere, credential=grant.token)
        with pytest.raises(HttpResponseError) as denied:
            raw.upload_blob("runs/x.txt", b"no")
        assert denied.value.status_code == 403, elsewhere
        with pytest.raises(HttpResponseError) as denied:
            raw.download_blob("job.json").readall()
        assert denied.value.status_code == 403, elsewhere
        with pytest.raises(HttpResponseError) as denied:
            next(iter(raw.list_blobs()))
        assert denied.value.status_code == 403, elsewhere
    assert other.get_bytes("job.json") == b"{}"
    short = job.storage.grant("", ttl_s=1, write=True)
    time.sleep(2.5)
    with pytest.raises(HttpResponseError) as expired:
        ContainerClient(short.endpoint, space, credential=short.token).upload_blob(
            "late.txt", b"late"
        )
    assert expired.value.status_code == 403


def test_file_storage_with_an_azure_template_is_refused_before_anything_starts(
    emulated_azure: Emulator, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="az://"):
        batch.submit(
            batch.Model("m", command="true"),
            name="nope",
            storage=(tmp_path / "runs").as_uri(),
            cluster="myscaleset",
        )
    assert not emulated_azure.state.scalesets


def test_an_mpi_run_on_an_azure_template_spans_two_vms(
    emulated_azure: Emulator, azurite: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json
    import shutil
    import sys

    from tests.integration.test_multinode_runs import ALLREDUCE

    if shutil.which("mpiexec") is None:
        pytest.skip("MPICH's mpiexec is not installed")
    monkeypatch.setenv("AZMANAGERS_STORAGE_CONNECTION_STRING", azurite)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "allreduce.py").write_text(ALLREDUCE)
    model = batch.MpiModel(
        "allreduce",
        command=f"{sys.executable} allreduce.py",  # run under mpiexec -n 4 -ppn 2
        inputs=[f"{tmp_path / 'code'}/"],
        nodes=2,
        ranks_per_node=2,
        coordination="echo coordinated on $AZM_NODE",
        outputs=["result.json"],
    )
    job = batch.submit(
        model,
        name="mpi",
        storage=f"az://mpi-{uuid.uuid4().hex[:8]}",
        cluster="myscaleset",
        wait=True,
        timeout=DEADLINE_S,
    )
    (run,) = job.runs()
    assert job.status().status == "succeeded", run
    result = json.loads(job.storage.get_bytes(run.outputs[0].key))
    assert result["size"] == 4 and result["sum"] == 10
    assert len(set(result["nodes"])) == 2  # two emulated VMs, two ranks each
    assert len(run.members) == 1 and b"coordinated on" in job.storage.get_bytes(
        run.members[0].stdout_key
    )
