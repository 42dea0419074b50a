"""Job spaces on both back-ends: each job's own folder or container, and grants scoped to it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from azmanagers.errors import ConfigError, StorageAccessError, StorageError, StorageNotFoundError
from azmanagers.storage import Storage, open_storage
from azmanagers.storage.base import Access
from azmanagers.storage.blob_spaces import SPACE_PREFIX, space_container
from azmanagers.storage.spaces import discard_if_empty, job_names, job_space


@pytest.fixture(params=["file", "az"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh storage root of each kind; on az:// every container it made is removed after."""
    if request.param == "file":
        store = open_storage((tmp_path / "jobs").as_uri())
        store.check()
        yield store
        store.close()
        return
    conn = request.getfixturevalue("azurite")
    container = f"r{uuid.uuid4().hex[:12]}"
    store = open_storage(f"az://{container}/team/a", connection_string=conn)
    store.check()
    raw = BlobServiceClient.from_connection_string(conn)
    before = {c.name for c in raw.list_containers()} - {container}
    try:
        yield store
    finally:
        store.close()
        for made in {c.name for c in raw.list_containers()} - before:
            raw.delete_container(made)
        raw.close()


def test_each_job_has_a_space_of_its_own_and_a_grant_reaches_only_it(root: Storage) -> None:
    one = job_space(root, "hist", create=True)
    two = job_space(root, "ptm", create=True)
    assert one.url != two.url and one.url != root.url
    one.put_bytes("job.json", b"{}")
    two.put_bytes("job.json", b"{}")
    grant = one.grant("", ttl_s=600, write=True)
    worker = grant.open()
    worker.put_bytes("runs/r1/out.txt", b"result")
    assert one.get_bytes("runs/r1/out.txt") == b"result"
    assert job_names(root) == ["hist", "ptm"]
    # the space is found again from a fresh root handle; a job never made is "not found"
    assert job_space(root, "hist", create=False).get_bytes("runs/r1/out.txt") == b"result"
    with pytest.raises(StorageNotFoundError):
        job_space(root, "never", create=False).get_bytes("job.json")
    assert job_names(root) == ["hist", "ptm"]  # looking made nothing
    # a grant's storage cannot reach back to the root or across to another job: on az:// it
    # cannot open a space at all; on file:// a "space" it opens is a folder inside its own job
    if root.url.startswith("az://"):
        with pytest.raises(StorageAccessError, match="cannot open job 'ptm'"):
            job_space(worker, "ptm", create=False)
    else:
        assert job_space(worker, "ptm", create=False).url == f"{one.url}/ptm"
    with pytest.raises(ConfigError):
        worker.get_bytes("../ptm/job.json")
    worker.close()


def test_a_refused_submission_removes_only_empty_folders(root: Storage, tmp_path: Path) -> None:
    empty = job_space(root, "refused", create=True)
    discard_if_empty(empty)
    used = job_space(root, "kept", create=True)
    used.put_bytes("inputs/a", b"a")
    discard_if_empty(used)
    assert job_space(root, "kept", create=False).get_bytes("inputs/a") == b"a"
    if root.url.startswith("file://"):
        assert "refused" not in job_names(root)
    else:  # an empty container stays, tagged, for the next submission (no delete-then-create)
        assert "refused" in job_names(root)
    job_space(root, "refused", create=True).put_bytes("job.json", b"{}")  # can be made again
    assert job_names(root) == ["kept", "refused"]  # "kept" has no record: jobs() skips it


def test_files_that_are_not_objects_survive_the_removal(tmp_path: Path) -> None:
    root = open_storage((tmp_path / "jobs").as_uri())
    space = job_space(root, "results", create=True)
    folder = tmp_path / "jobs" / "results"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "sub" / "my\nnotes.txt").write_text("mine")  # not a valid key: never listed
    (folder / "link").symlink_to(tmp_path)
    (folder / ".azm-tmp-123").write_text("a concurrent put")
    discard_if_empty(space)
    assert (folder / "sub" / "my\nnotes.txt").read_text() == "mine"
    assert (folder / "link").is_symlink() and (folder / ".azm-tmp-123").exists()
    assert not (folder / "sub" / "deeper").exists()  # only the empty folder went


def test_a_read_only_root_gives_read_only_spaces(tmp_path: Path) -> None:
    store = open_storage((tmp_path / "jobs").as_uri())
    job_space(store, "a", create=True).put_bytes("job.json", b"{}")
    ro = store.grant("", ttl_s=600, write=False).open()
    space = job_space(ro, "a", create=False)
    assert space.get_bytes("job.json") == b"{}"
    with pytest.raises(StorageAccessError):
        space.put_bytes("job.json", b"[]")


def test_access_inside_a_folder() -> None:
    assert Access("a/b/", write=False).inside("a", "u") == Access("b/", False, True, None)
    assert Access("").inside("a", "u").prefix == ""
    assert Access("a/").inside("a", "u").prefix == ""
    with pytest.raises(StorageAccessError, match="limited to 'b/'"):
        Access("b/").inside("a", "u")


def test_job_containers_are_valid_distinct_and_readable() -> None:
    names = {
        space_container(root, job)
        for root in ("az://runs", "az://runs/ptm", "az://other")
        for job in ("hist", "Hist", "a" * 63, "x.y_z--1")
    }
    assert len(names) == 12
    for name in names:
        assert name.startswith(SPACE_PREFIX) and 3 <= len(name) <= 63, name
        assert "--" not in name and name == name.lower() and name[-1].isalnum(), name
    assert space_container("az://runs", "hist").startswith("azm-hist-")


def test_az_spaces_are_found_by_their_tags_not_their_names(azurite: str) -> None:
    raw = BlobServiceClient.from_connection_string(azurite)
    container = f"r{uuid.uuid4().hex[:12]}"
    root = open_storage(f"az://{container}", connection_string=azurite)
    root.check()
    made: list[str] = []
    try:
        job_space(root, "real", create=True)
        made.append(space_container(root.url, "real"))
        # a container with a job container's name but no tags, and one tagged for another root
        squatter = space_container(root.url, "squat")
        raw.create_container(squatter)
        made.append(squatter)
        other_root = open_storage(f"az://{container}/elsewhere", connection_string=azurite)
        job_space(other_root, "theirs", create=True)
        made.append(space_container(other_root.url, "theirs"))
        assert job_names(root) == ["real"]
        assert job_names(other_root) == ["theirs"]
        # making a job whose container is someone else's is refused, and loses nothing
        raw.get_container_client(squatter).upload_blob("keep.txt", b"mine")
        with pytest.raises(StorageError, match="not the container of job 'squat'"):
            job_space(root, "squat", create=True)
        with pytest.raises(StorageError, match="not the container of job 'squat'"):
            job_space(root, "squat", create=False)  # nor is it read as the job
        assert raw.get_container_client(squatter).download_blob("keep.txt").readall() == b"mine"
    finally:
        root.close()
        for name in [*made, container]:
            raw.delete_container(name)
        raw.close()
