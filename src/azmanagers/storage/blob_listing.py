"""Reading a container's names for az://: one blob's HEAD, listings by prefix and by folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from azure.storage.blob import BlobPrefix, ContainerClient

from azmanagers.storage.base import ObjectInfo, is_key
from azmanagers.storage.blob_errors import mapped_errors
from azmanagers.storage.blob_transfer import Where, blob_info


def head(container: ContainerClient, name: str, where: Where) -> ObjectInfo | None:
    """Return the info of blob ``name`` (one HEAD), or None when there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    with mapped_errors(where.url, where.endpoint, account=where.account):
        try:
            props = container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return None
    return blob_info(where.key, props.size, props.metadata, props.last_modified)


def list_infos(
    container: ContainerClient, base: str, prefix: str, where: Where
) -> Iterator[ObjectInfo]:
    """Yield the objects under ``base + prefix`` in the service's (sorted) order, keyed past
    ``base``; names no call accepts (a//b, .azm-x, c/) are skipped."""
    cut = len(base)
    with mapped_errors(where.url, where.endpoint, account=where.account):
        for item in container.list_blobs(name_starts_with=base + prefix, include=["metadata"]):
            if is_key(item.name[cut:]):
                yield blob_info(item.name[cut:], item.size, item.metadata, item.last_modified)


def folder_names(container: ContainerClient, base: str, folder: str, where: Where) -> list[str]:
    """Return the sorted names of the "folders" directly under ``base + folder``."""
    cut = len(base + folder)
    with mapped_errors(where.url, where.endpoint, account=where.account):
        return sorted(
            item.name[cut:].rstrip("/")
            for item in container.walk_blobs(name_starts_with=base + folder, delimiter="/")
            if isinstance(item, BlobPrefix) and is_key(folder + item.name[cut:].rstrip("/"))
        )


def list_common_folder(
    listing: Callable[[str], Iterator[ObjectInfo]], keys: Sequence[str]
) -> tuple[dict[str, ObjectInfo], str | None]:
    """List the common folder of ``keys`` once (bounded); return infos and the last name.

    The last name is None when the listing was complete; otherwise keys after it were not
    looked at.
    """
    common = os.path.commonprefix(list(keys))  # noqa: RUF071 (strings, on purpose)
    folder = common[: common.rfind("/") + 1]
    limit = max(1000, 4 * len(keys))
    found: dict[str, ObjectInfo] = {}
    last: str | None = None
    for info in listing(folder):
        found[info.key] = info
        if len(found) >= limit:
            last = info.key
            break
    return found, last
