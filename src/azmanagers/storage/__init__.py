"""The storage seam: objects by key under a root URL, ``file://`` (a folder) or ``az://`` (Blob).

``base`` (ObjectInfo, Grant, the Storage Protocol, ``open_storage``, ``is_storage_url``),
``keys`` (what a key or prefix may be, and its checks), ``hashing`` (SHA-256 of files, the
one rule for recorded hashes),
``files`` (local-file helpers: error mapping, downloads via ``.<name>.azm-part-*``),
``local`` (``file://``: files plus hash sidecars under ``.azm-meta/``, whose on-disk layout,
lock and atomic writes are in ``local_meta``), ``blob`` (``az://`` on azure-storage-blob, moving
blobs in ``blob_transfer``, HEAD and listings in ``blob_listing``) with its account, HTTP pool and
clients in ``blob_account``, error mapping (and what to do about a refusal) in ``blob_errors``
and container SAS signing in ``blob_sas``; ``spaces`` (a job's own space: a sub-folder, or on
az:// a container of its own tagged in ``blob_spaces``, so that a grant reaches one job).
storage/ may import only ``azmanagers.errors``, ``azmanagers._version`` and
``azmanagers.config`` (plus the Azure SDKs, loaded only for az://).
"""

from __future__ import annotations

from azmanagers.storage.base import (
    Grant,
    ObjectInfo,
    Storage,
    check_key,
    is_storage_url,
    open_storage,
)

__all__ = ["Grant", "ObjectInfo", "Storage", "check_key", "is_storage_url", "open_storage"]
