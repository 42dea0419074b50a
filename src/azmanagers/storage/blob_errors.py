"""What the Blob service's errors mean to us: our exceptions, and what to do about a refusal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from azmanagers.errors import (
    ConfigError,
    IntegrityError,
    StorageAccessError,
    StorageError,
    StorageNotFoundError,
)
from azmanagers.storage.blob_account import ACCOUNT_ENV, CONNECTION_ENV, Account


def error_code(exc: HttpResponseError) -> str:
    """The service's error code (e.g. "InvalidBlockList"), else the HTTP status."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or exc.status_code)


@contextlib.contextmanager
def mapped_errors(
    what: str, endpoint: str, passing: tuple[int, ...] = (), *, account: Account | None = None
) -> Iterator[None]:
    """Map azure.core exceptions to ours; no key or SAS ever goes into a message.

    HTTP errors whose status is in ``passing`` are re-raised as they are, for the caller. A
    refusal (401, 403) says what to do for the credential ``account`` holds (a signed-in
    identity, a key or a SAS); without ``account`` it says it for each.
    """
    try:
        yield
    except (ConfigError, StorageError, IntegrityError):
        raise
    except HttpResponseError as exc:
        if exc.status_code in passing:
            raise
        _map_http(what, endpoint, exc, account)
    except (ServiceRequestError, ServiceResponseError) as exc:
        # Connection messages may quote the request URL, whose query holds a SAS: say less.
        raise StorageError(
            f"{what}: cannot reach the Blob endpoint {endpoint} ({type(exc).__name__}); "
            "check the account, the network and that the service is up"
        ) from None


def _map_http(
    what: str, endpoint: str, exc: HttpResponseError, account: Account | None
) -> NoReturn:
    """Raise our error for an azure.core HTTP error (codes printed as the service sends them)."""
    code = error_code(exc)
    if isinstance(exc, ResourceNotFoundError) or exc.status_code == 404:
        if code == "ContainerNotFound":
            raise StorageNotFoundError(
                f"{what}: the container does not exist; create it or call check() as its owner"
            ) from exc
        raise StorageNotFoundError(f"{what}: not found ({code})") from exc
    if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
        raise StorageAccessError(  # no request was sent: DefaultAzureCredential found no one
            f"{what}: no signed-in identity for {endpoint} ({type(exc).__name__}); sign in "
            f"(`az login`, a managed identity), or set {CONNECTION_ENV[0]}"
        ) from exc
    if isinstance(exc, ClientAuthenticationError) or exc.status_code in (401, 403):
        raise StorageAccessError(
            f"{what}: the storage account {endpoint} refused it ({code}); "
            f"{refusal_hint(account, code)}"
        ) from exc
    raise StorageError(f"{what}: the service answered {exc.status_code} ({code})") from exc


IDENTITY_ROLE_HINT = (
    "with a signed-in identity (Entra ID, DefaultAzureCredential), creating containers, writing "
    'blobs and signing a user-delegation SAS need the role "Storage Blob Data Contributor" on '
    'the storage account (reading needs "Storage Blob Data Reader"; Owner or Contributor alone '
    "give no access to data): ask for it (az role assignment create --role "
    '"Storage Blob Data Contributor" --assignee <you> --scope <the account\'s resource id>), '
    "allow a few minutes for it to apply, and try again"
)
"""What a 403 means for a signed-in identity, and what to do."""

_NETWORK_CODES = frozenset({"AuthorizationSourceIPMismatch", "AuthorizationFailure"})
"""Codes the service also gives when its network rules (firewall) do not admit the caller."""


def refusal_hint(account: Account | None, code: str) -> str:
    """What to do about a 401/403 with ``code``, for the credential ``account`` holds (None:
    not known, e.g. a job's SAS). Never quotes the credential itself."""
    network = (
        "; or the account's network rules (firewall) do not admit this machine"
        if code in _NETWORK_CODES
        else ""
    )
    if code == "KeyBasedAuthenticationNotPermitted":
        return (
            "the account allows no key (Shared Key) access: sign in instead (set "
            f"{ACCOUNT_ENV} rather than a connection string, and `az login`); " + IDENTITY_ROLE_HINT
        )
    if account is None:
        return (
            "a job's SAS, or a connection string's key or SAS, lacks this permission, has "
            'expired or is wrong; a signed-in identity needs the role "Storage Blob Data '
            'Contributor" on the storage account (to read: "Storage Blob Data Reader")' + network
        )
    if not account.connection_string:
        if code == "AuthenticationFailed":
            return "the signed-in identity's token was not accepted: sign in again (az login)"
        return IDENTITY_ROLE_HINT + network
    if account.account_key:
        if code == "AuthenticationFailed":
            return (
                "the account key in the connection string was not accepted (rotated?): copy "
                "the connection string again (`az storage account show-connection-string`)"
            )
        return "the connection string's account key lacks this permission" + network
    return (
        "the SAS in the connection string lacks this permission or has expired: make one "
        "that allows it (for batch jobs: resource types service, container and object; "
        "permissions read, write, create, add and list), or use a connection string with "
        "the account key, or a signed-in identity" + network
    )
