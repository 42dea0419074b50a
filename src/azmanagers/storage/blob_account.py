"""The Blob account behind az:// URLs: parsing, credentials, the HTTP pool and clients."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ExponentialRetry,
)
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from azmanagers.errors import (
    ConfigError,
)
from azmanagers.storage.base import check_key, shown_url

CONNECTION_ENV = ("AZMANAGERS_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_CONNECTION_STRING")
"""Environment variables holding a connection string, in order of precedence."""

ACCOUNT_URL_ENV = "AZURE_STORAGE_ACCOUNT_URL"
ACCOUNT_ENV = "AZURE_STORAGE_ACCOUNT"

BLOCK_BYTES = 8 << 20
"""Block size for staged uploads and ranged downloads (8 MiB, as azcopy)."""

BLOCK_THREADS = 8
"""Blocks of one big file in flight at once."""

FILE_THREADS = 16
"""Files in flight at once in put_files/get_files."""

POOL_CONNECTIONS = BLOCK_THREADS + FILE_THREADS + 4
"""HTTP connections kept per host: every thread has one."""

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for a TCP connection to the Blob endpoint."""

READ_TIMEOUT_S = 60.0
"""Longest silence on a data call's socket (one 8 MiB block moves in well under this). With
RETRIES, one request is silent for at most (1 + RETRIES) * (READ_TIMEOUT_S + backoff), about
4 minutes on an endpoint that accepts and never answers, then a StorageError."""

CHECK_READ_TIMEOUT_S = 4.0
"""check()'s read timeout: with one retry, an endpoint that never answers is reported in about
12 seconds (4 + backoff + 4)."""

READ_BLOCK_BYTES = 1 << 20
"""Bytes read from a response per step (the transport's own default, 4 KiB, is slow)."""

RETRIES = 3
"""The SDK's retries of a failed request (connection errors, 5xx, 429)."""

RETRY_FIRST_S = 1
RETRY_BASE = 2
"""Waits between retries: RETRY_FIRST_S + RETRY_BASE**n seconds, about 2, 3, 5 (the SDK's
default waits 15, 18, 24: a minute before an unreachable account is reported)."""

SAS_SKEW_S = 300
"""A SAS starts this long before now, for clocks that differ."""

HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"
"""The SDK logs every request and its headers at INFO; a program (or a Dask worker) whose
logging shows INFO would print them all. Unless someone set its level, it says WARNING+."""
if logging.getLogger(HTTP_LOGGER).level == logging.NOTSET:
    logging.getLogger(HTTP_LOGGER).setLevel(logging.WARNING)

CONTAINER_NAME = re.compile(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]")
"""A Blob container name: 3 to 63 of a-z, 0-9 and single hyphens, not at either end."""


@dataclass(frozen=True)
class BlobLocation:
    """An ``az://container[/prefix]`` URL, split."""

    container: str
    prefix: str  # "" or "a/b/" (blob names are prefix + key)

    @property
    def url(self) -> str:
        """The canonical URL, without a trailing "/"."""
        return f"az://{self.container}/{self.prefix}".rstrip("/")


def parse_az_url(url: str) -> BlobLocation:
    """Split ``az://container[/prefix]``; ConfigError naming the URL when it is malformed."""
    shown = shown_url(url)
    if shown != url:
        raise ConfigError(
            f"storage URL {shown!r}: no query (SAS) in az:// URLs; the account comes from "
            "connection_string= or AZMANAGERS_STORAGE_CONNECTION_STRING"
        )
    rest = url.removeprefix("az://").strip("/")
    container, _, prefix = rest.partition("/")
    if not CONTAINER_NAME.fullmatch(container):
        raise ConfigError(
            f"storage URL {url!r}: the container {container!r} must be 3 to 63 lower-case "
            "letters, digits and single hyphens (az://container/optional/prefix)"
        )
    if prefix:
        check_key(prefix, what=f"prefix of storage URL {url!r}")
    return BlobLocation(container=container, prefix=f"{prefix}/" if prefix else "")


@dataclass(frozen=True)
class Account:
    """How to reach the account: a connection string, or an account URL with a token."""

    account_url: str = ""
    connection_string: str = field(default="", repr=False)
    account_name: str = ""
    account_key: str = field(default="", repr=False)


def _connection_fields(text: str) -> dict[str, str]:
    fields = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


def resolve_account(connection_string: str | None) -> Account:
    """Find the account: the argument, then the environment (see CONNECTION_ENV, ACCOUNT_*)."""
    text = connection_string or next(
        (os.environ[name] for name in CONNECTION_ENV if os.environ.get(name)), ""
    )
    if text:
        fields = _connection_fields(text)
        if "AccountName" not in fields and "BlobEndpoint" not in fields:
            raise ConfigError(
                "the storage connection string has no AccountName or BlobEndpoint; copy it "
                "from the portal (Access keys) or `az storage account show-connection-string`"
            )
        return Account(
            connection_string=text,
            account_name=fields.get("AccountName", ""),
            account_key=fields.get("AccountKey", ""),
        )
    if url := os.environ.get(ACCOUNT_URL_ENV, ""):
        return Account(account_url=url.rstrip("/"))
    if name := os.environ.get(ACCOUNT_ENV, ""):
        return Account(account_url=f"https://{name}.blob.core.windows.net", account_name=name)
    raise ConfigError(
        "no storage account for az:// storage: pass connection_string=..., or set "
        f"{' or '.join(CONNECTION_ENV)} (a connection string), or {ACCOUNT_URL_ENV} / "
        f"{ACCOUNT_ENV} (signed in with DefaultAzureCredential, e.g. `az login`)"
    )


class _Adapter(HTTPAdapter):
    """A requests adapter with bigger socket writes (64 KiB) for block uploads."""

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: object
    ) -> None:
        pool_kwargs.setdefault("blocksize", 1 << 16)
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def make_session() -> requests.Session:
    """Return a requests session with a connection for every transfer thread."""
    session = requests.Session()
    adapter = _Adapter(
        pool_connections=4,
        pool_maxsize=POOL_CONNECTIONS,
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _transport(session: requests.Session) -> RequestsTransport:
    return RequestsTransport(
        session=session,
        session_owner=False,
        connection_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        connection_data_block_size=READ_BLOCK_BYTES,
    )


def _retry() -> ExponentialRetry:
    return ExponentialRetry(
        initial_backoff=RETRY_FIRST_S,
        increment_base=RETRY_BASE,
        retry_total=RETRIES,
        random_jitter_range=1,
    )


def service_client(
    account: Account, session: requests.Session, credential: TokenCredential | None
) -> BlobServiceClient:
    """A BlobServiceClient on ``session`` with our block sizes and retries."""
    if account.connection_string:
        return BlobServiceClient.from_connection_string(
            account.connection_string,
            **_client_options(session),
        )
    return BlobServiceClient(
        account.account_url,
        credential=credential,
        **_client_options(session),
    )


def _client_options(session: requests.Session) -> dict[str, Any]:
    """What every Blob client of ours is made with: our pooled transport, block sizes, retries."""
    return {
        "transport": _transport(session),
        "max_block_size": BLOCK_BYTES,
        "max_single_put_size": BLOCK_BYTES,
        "max_single_get_size": BLOCK_BYTES,
        "max_chunk_get_size": BLOCK_BYTES,
        "retry_policy": _retry(),
    }


def sas_container_client(
    endpoint: str, container: str, token: str, session: requests.Session
) -> ContainerClient:
    """A ContainerClient authorised by a SAS token, on ``session``."""
    return ContainerClient(
        endpoint,
        container,
        credential=token,
        **_client_options(session),
    )
