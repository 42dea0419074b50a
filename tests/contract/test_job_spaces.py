"""Job spaces on both back-ends: each job's own folder or container, and grants scoped to it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
)

from azmanagers.errors import ConfigError, StorageAccessError, StorageError, StorageNotFoundError
from azmanagers.storage import Storage, open_storage
from azmanagers.storage.base import Access
from azmanagers.storage.blob_account import Account
from azmanagers.storage.blob_sas import container_sas
from azmanagers.storage.blob_spaces import SPACE_PREFIX, space_container
from azmanagers.storage.spaces import discard_if_empty, job_names, job_space
from tests.azurite import ACCOUNT, ACCOUNT_KEY


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


def test_a_job_container_with_metadata_others_added_is_still_the_job(azurite: str) -> None:
    raw = BlobServiceClient.from_connection_string(azurite)
    container = f"r{uuid.uuid4().hex[:12]}"
    root = open_storage(f"az://{container}", connection_string=azurite)
    root.check()
    made = [space_container(root.url, "tagged")]
    try:
        job_space(root, "tagged", create=True).put_bytes("job.json", b"{}")
        client = raw.get_container_client(made[0])
        ours = client.get_container_properties().metadata
        client.set_container_metadata({**ours, "costcenter": "hydro", "policyowner": "it"})
        assert job_space(root, "tagged", create=False).get_bytes("job.json") == b"{}"
        assert job_space(root, "tagged", create=True).get_bytes("job.json") == b"{}"
        assert job_names(root) == ["tagged"]
        # one of our own keys with another value: refused, whatever else is there
        client.set_container_metadata({**ours, "azm_job": "other", "costcenter": "hydro"})
        for create in (False, True):
            with pytest.raises(StorageError, match="not the container of job 'tagged'"):
                job_space(root, "tagged", create=create)
        # one of our keys missing: refused too
        client.set_container_metadata({k: v for k, v in ours.items() if k != "azm_root"})
        with pytest.raises(StorageError, match="not the container of job 'tagged'"):
            job_space(root, "tagged", create=False)
        assert job_names(root) == []
    finally:
        root.close()
        for name in [*made, container]:
            raw.delete_container(name)
        raw.close()


def sas_connection(azurite: str, permission: AccountSasPermissions) -> tuple[str, str]:
    """A connection string holding only an account SAS with ``permission`` (and its token)."""
    endpoint = azurite.split("BlobEndpoint=", 1)[1].rstrip(";")
    token = generate_account_sas(
        ACCOUNT,
        ACCOUNT_KEY,
        ResourceTypes(service=True, container=True, object=True),
        permission,
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    return f"BlobEndpoint={endpoint};SharedAccessSignature={token}", token


def test_a_sas_that_may_not_create_containers_says_so_and_uses_what_is_there(
    azurite: str,
) -> None:
    raw = BlobServiceClient.from_connection_string(azurite)
    container = f"r{uuid.uuid4().hex[:12]}"
    owner = open_storage(f"az://{container}", connection_string=azurite)
    owner.check()
    job_space(owner, "there", create=True).put_bytes("job.json", b"{}")
    made = [container, space_container(owner.url, "there")]
    # a SAS with write on containers may create them: this one may only read and list
    limited, token = sas_connection(azurite, AccountSasPermissions(read=True, list=True))
    root = open_storage(f"az://{container}", connection_string=limited)
    try:
        with pytest.raises(StorageAccessError) as refused:
            job_space(root, "new job", create=True)
        text = str(refused.value)
        assert f"making the job container az://{space_container(root.url, 'new job')}" in text
        assert "AuthorizationPermissionMismatch" in text and ACCOUNT in text
        assert "the SAS in the connection string lacks this permission" in text
        assert token not in text and "sig=" not in text
        assert space_container(root.url, "new job") not in {c.name for c in raw.list_containers()}
        # the job's container made by the owner is used: no create needed
        assert job_space(root, "there", create=True).get_bytes("job.json") == b"{}"
        # a SAS cannot sign the workers' SAS: said before any request, without a role hint
        with pytest.raises(StorageAccessError, match="cannot sign the SAS") as no_grant:
            job_space(root, "there", create=False).grant("", ttl_s=600, write=True)
        assert "Contributor" not in str(no_grant.value) and token not in str(no_grant.value)
        # and a container there that is not this job's is still refused
        squatter = space_container(root.url, "squat")
        raw.create_container(squatter)
        made.append(squatter)
        with pytest.raises(StorageAccessError, match="lacks this permission"):
            job_space(root, "squat", create=True)
    finally:
        root.close()
        owner.close()
        for name in made:
            raw.delete_container(name)
        raw.close()


def test_a_refused_user_delegation_key_names_the_role(azurite: str) -> None:
    # Azurite refuses a user-delegation key to a key-signed request (403), as Azure refuses
    # it to an identity without a data role: the message says which role to ask for
    service = BlobServiceClient.from_connection_string(azurite)
    endpoint = service.url.split("?", 1)[0].rstrip("/")
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    try:
        with pytest.raises(StorageAccessError) as refused:
            container_sas(Account(account_url=endpoint), service, "jobs", expiry, write=True)
    finally:
        service.close()
    text = str(refused.value)
    assert "user-delegation SAS for container jobs" in text and endpoint in text
    assert '"Storage Blob Data Contributor"' in text and ACCOUNT_KEY not in text
