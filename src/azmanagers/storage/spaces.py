"""A job's own space in a storage root: a sub-folder on file://, a container of its own on az://.

Everything of one batch job (records, staged inputs, logs, outputs) lives in its space, and a
grant made on the space covers that job and nothing else: on az:// a container SAS is the
smallest scope Blob's flat namespace offers, so each job gets a container.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from azmanagers.errors import StorageAccessError
from azmanagers.storage.base import Storage, check_key

if TYPE_CHECKING:
    from azmanagers.storage.blob import BlobStorage


def job_space(root: Storage, name: str, *, create: bool) -> Storage:
    """The space of job ``name`` in the storage root ``root``.

    Parameters
    ----------
    root : Storage
        A storage root opened with the account (not a job's grant).
    name : str
        The job's name (a single path part).
    create : bool
        Make the space when it is missing (a submission); otherwise a missing job reads as
        "not found" and nothing is made.
    """
    check_key(name, what="job name")
    from azmanagers.storage.local import LocalStorage

    if isinstance(root, LocalStorage):
        space = LocalStorage(
            root.root / name, access=root.access.inside(name, root.url), create=create
        )
        if create:
            space.check()
        return space
    from azmanagers.storage.blob_spaces import open_space

    return open_space(_blob(root), name, create=create)


def job_names(root: Storage) -> list[str]:
    """The names of the job spaces in ``root``: its folders, or the containers tagged as its jobs.

    A space may hold no job record yet (a submission being staged, or refused after staging).
    """
    from azmanagers.storage.local import LocalStorage

    if isinstance(root, LocalStorage):
        return root.list_dirs("")
    from azmanagers.storage.blob_spaces import space_names

    return space_names(_blob(root))


def _blob(root: Storage) -> BlobStorage:
    from azmanagers.storage.blob import BlobStorage

    if not isinstance(root, BlobStorage):
        raise StorageAccessError(f"{root.url}: jobs need a file:// or az:// storage")
    return root


def discard_if_empty(space: Storage) -> None:
    """Remove the empty folders of a job space a refused submission made (file:// only).

    Only folders are removed, bottom-up and only when empty, so a file anyone put there (a
    concurrent submission's temp file, a user's file) keeps its folder. On az:// the empty
    container stays, tagged, and is reused by the next submission: deleting it would make a
    quick resubmission wait (Azure refuses to re-create a container being deleted).
    """
    from azmanagers.storage.local import LocalStorage

    if not isinstance(space, LocalStorage):
        return
    for folder, _, _ in sorted(os.walk(space.root, followlinks=False), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
