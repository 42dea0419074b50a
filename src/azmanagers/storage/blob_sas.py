"""Signing a container SAS: what a job's workers get instead of the account's credential."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from azmanagers.errors import StorageAccessError
from azmanagers.storage.blob_account import ACCOUNT_ENV, ACCOUNT_URL_ENV, SAS_SKEW_S, Account
from azmanagers.storage.blob_errors import IDENTITY_ROLE_HINT, error_code


def container_sas(
    account: Account | None,
    service: BlobServiceClient | None,
    container: str,
    expiry: datetime,
    *,
    write: bool,
) -> str:
    """Sign a container SAS: read+list, plus create+write+add when ``write``; never delete.

    With an account key: an account-key SAS. With a signed-in identity: a user-delegation SAS
    (the identity needs ``generateUserDelegationKey``). A SAS-opened storage cannot grant.
    """
    start = datetime.now(timezone.utc) - timedelta(seconds=SAS_SKEW_S)
    permission = ContainerSasPermissions(read=True, list=True, write=write, create=write, add=write)
    if account is not None and account.account_key:
        return generate_container_sas(
            account.account_name,
            container,
            account_key=account.account_key,
            permission=permission,
            expiry=expiry,
            start=start,
        )
    if account is not None and account.connection_string:  # it holds a SAS: no key to sign
        raise StorageAccessError(
            f"container {container}: a connection string with a SAS cannot sign the SAS a "
            "job's workers get; use a connection string with the account key, or sign in "
            f"(set {ACCOUNT_ENV} or {ACCOUNT_URL_ENV} instead, and `az login`)"
        )
    if account is not None and service is not None:
        try:
            delegation = service.get_user_delegation_key(start, expiry)
        except HttpResponseError as exc:
            if exc.status_code not in (401, 403):
                raise
            endpoint = service.url.split("?", 1)[0].rstrip("/")
            raise StorageAccessError(
                f"a user-delegation SAS for container {container} on {endpoint}: refused "
                f"({error_code(exc)}); {IDENTITY_ROLE_HINT}"
            ) from exc
        return generate_container_sas(
            service.account_name or account.account_name,
            container,
            user_delegation_key=delegation,
            permission=permission,
            expiry=expiry,
            start=start,
        )
    raise StorageAccessError(f"container {container}: this credential cannot grant access")
