"""A batch job's own container on az://, so that a container SAS is scoped to that job alone."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from azmanagers.errors import StorageAccessError, StorageError
from azmanagers.storage.blob import BlobStorage
from azmanagers.storage.blob_account import Account, BlobLocation
from azmanagers.storage.blob_errors import mapped_errors

SPACE_PREFIX = "azm-"
"""Every job container's name starts with this (listings ask the service for these only)."""

SPACE_KIND = "batch-job"
KIND_KEY, ROOT_KEY, JOB_KEY = "azm_kind", "azm_root", "azm_job"
"""The container metadata that marks a job's container: its kind, root URL and job name."""

SLUG_CHARS = 40
DIGEST_CHARS = 12
"""A job container is ``azm-<slug of the name>-<12 hex of the root and name>``: at most 57
characters (Blob allows 63), readable in the portal, and distinct per root and job."""


def space_container(root_url: str, name: str) -> str:
    """The container that holds job ``name`` of the storage root ``root_url``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:SLUG_CHARS].strip("-")
    digest = hashlib.sha256(f"{root_url}\n{name}".encode()).hexdigest()[:DIGEST_CHARS]
    return f"{SPACE_PREFIX}{slug or 'job'}-{digest}"


def open_space(root: BlobStorage, name: str, *, create: bool) -> BlobStorage:
    """Job ``name``'s container, as a Storage on the same account and HTTP pool as ``root``.

    With ``create`` the container is made (tagged with its kind, root and job in its metadata)
    or, when it exists, checked to be this job's. Needs the account (a key or a signed-in
    identity allowed to create containers): a grant cannot open another container. When the
    credential may not create containers (a 403), a container that is already this job's is
    used; otherwise ``StorageAccessError`` says which role or permission is missing.
    """
    if root.service is None:
        raise StorageAccessError(
            f"{root.url}: a job's credential cannot open job {name!r}; open the storage with "
            "the account's connection string or a signed-in identity"
        )
    location = BlobLocation(container=space_container(root.url, name), prefix="")
    client = root.service.get_container_client(location.container)
    where = _Where(root.url, name, location.url, root.endpoint, root.account)
    if create:
        _make(client, where)
    else:
        _check_tags(client, where)
    return BlobStorage(
        location,
        client,  # shares root's HTTP pool: closing it leaves root's open
        endpoint=root.endpoint,
        access=root.access.inside(name, root.url),
        account=root.account,
        service=root.service,
    )


def space_names(root: BlobStorage) -> list[str]:
    """The names of the jobs whose containers belong to ``root`` (found by their metadata)."""
    service = root.service
    if service is None:
        raise StorageAccessError(
            f"{root.url}: a job's credential cannot list other jobs; open the storage with the "
            "account's connection string or a signed-in identity"
        )
    names = []
    with mapped_errors(f"listing the jobs of {root.url}", root.endpoint, account=root.account):
        for item in service.list_containers(name_starts_with=SPACE_PREFIX, include_metadata=True):
            meta = item.metadata or {}
            job = meta.get(JOB_KEY, "")
            if (
                meta.get(KIND_KEY) == SPACE_KIND
                and unquote(meta.get(ROOT_KEY, "")) == root.url
                and item.name == space_container(root.url, job)
            ):  # only our keys are read: keys others add to a container do not matter
                names.append(job)
    return sorted(names)


def _tags(root_url: str, name: str) -> dict[str, str]:
    return {KIND_KEY: SPACE_KIND, ROOT_KEY: quote(root_url, safe=""), JOB_KEY: name}


def is_tagged(metadata: Mapping[str, str], root_url: str, name: str) -> bool:
    """Whether container ``metadata`` marks job ``name`` of ``root_url``: each of our keys is
    there with our value; keys others added (a tool, Azure Policy) do not matter."""
    return all(metadata.get(key) == value for key, value in _tags(root_url, name).items())


@dataclass(frozen=True)
class _Where:
    """Which job container a call is about, for its checks and messages."""

    root_url: str
    name: str
    url: str
    endpoint: str
    account: Account | None


def _check_tags(client: ContainerClient, where: _Where) -> None:
    """A job container that exists must carry this job's tags (one HEAD); missing is fine."""
    with mapped_errors(
        f"reading the job container {where.url}", where.endpoint, account=where.account
    ):
        try:
            found = client.get_container_properties().metadata or {}
        except ResourceNotFoundError:
            return
    if not is_tagged(found, where.root_url, where.name):
        raise StorageError(
            f"{where.url} exists but is not the container of job {where.name!r} of "
            f"{where.root_url} (its metadata says otherwise); delete or rename that container, "
            "or use another job name."
        )


def _make(client: ContainerClient, where: _Where) -> None:
    """Create the job's container, or check that the one there is this job's.

    A credential that may not create containers (403) may still use this job's container
    when it is there already; when it is not, the refusal to create it is raised.
    """
    what = f"making the job container {where.url}"
    try:
        with mapped_errors(what, where.endpoint, passing=(403,), account=where.account):
            try:
                client.create_container(metadata=_tags(where.root_url, where.name))
                return
            except ResourceExistsError:
                pass
    except HttpResponseError as refused:
        with contextlib.suppress(StorageError):
            with mapped_errors(what, where.endpoint, account=where.account):
                found = client.get_container_properties().metadata or {}
            if is_tagged(found, where.root_url, where.name):
                return
        with mapped_errors(what, where.endpoint, account=where.account):
            raise refused from None
    _check_tags(client, where)
