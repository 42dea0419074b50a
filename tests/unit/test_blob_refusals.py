"""What a refused Blob request (401/403) tells the user, for each kind of credential."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import CredentialUnavailableError

from azmanagers.errors import StorageAccessError, StorageError
from azmanagers.storage.blob_account import Account
from azmanagers.storage.blob_errors import mapped_errors

ENDPOINT = "https://acct.blob.core.windows.net"
KEY = "c2VjcmV0LWtleS1ub3QtdG8tYmUtc2hvd24="
SAS = "sv=2024-01-01&sig=c2VjcmV0LXNpZw%3D"
IDENTITY = Account(account_url=ENDPOINT, account_name="acct")
WITH_KEY = Account(
    connection_string=f"AccountName=acct;AccountKey={KEY}", account_name="acct", account_key=KEY
)
WITH_SAS = Account(connection_string=f"BlobEndpoint={ENDPOINT};SharedAccessSignature={SAS}")


def refused(status: int, code: str, cls: type[HttpResponseError] = HttpResponseError) -> Exception:
    """An SDK error as the service's answer makes it (status and error code)."""
    exc = cls(message="This request is not authorized to perform this operation.")
    exc.status_code = status
    exc.error_code = code  # type: ignore[attr-defined]  # set by the storage SDK too
    return exc


def mapped(exc: Exception, account: Account | None) -> StorageError:
    what = "making the job container az://azm-a-1"
    with pytest.raises(StorageError) as caught, mapped_errors(what, ENDPOINT, account=account):
        raise exc
    text = str(caught.value)
    assert KEY not in text and "sig=" not in text
    return caught.value


@pytest.mark.parametrize("code", ["AuthorizationPermissionMismatch", "AuthorizationFailure"])
def test_an_identity_without_a_data_role_is_told_which_role(code: str) -> None:
    error = mapped(refused(403, code), IDENTITY)
    text = str(error)
    assert isinstance(error, StorageAccessError)
    assert text.startswith(f"making the job container az://azm-a-1: the storage account {ENDPOINT}")
    assert f"({code})" in text and '"Storage Blob Data Contributor"' in text
    assert "DefaultAzureCredential" in text and "az role assignment create" in text
    assert ("network rules" in text) == (code == "AuthorizationFailure")


def test_a_connection_string_refusal_names_its_key_or_sas_not_a_role() -> None:
    text = str(mapped(refused(403, "AuthorizationPermissionMismatch"), WITH_SAS))
    assert "the SAS in the connection string lacks this permission" in text
    assert "Storage Blob Data" not in text
    text = str(mapped(refused(403, "AuthenticationFailed", ClientAuthenticationError), WITH_KEY))
    assert "account key in the connection string was not accepted" in text
    text = str(mapped(refused(403, "KeyBasedAuthenticationNotPermitted"), WITH_KEY))
    assert "allows no key (Shared Key) access" in text and "AZURE_STORAGE_ACCOUNT" in text


def test_a_refusal_for_an_unknown_credential_covers_each_kind() -> None:
    text = str(mapped(refused(403, "AuthorizationPermissionMismatch"), None))
    assert "a job's SAS" in text and "connection string" in text
    assert '"Storage Blob Data Contributor"' in text


def test_no_identity_at_all_says_to_sign_in() -> None:
    error = mapped(CredentialUnavailableError(message="no az login"), IDENTITY)
    assert isinstance(error, StorageAccessError)
    assert "no signed-in identity" in str(error) and "az login" in str(error)


def test_other_http_errors_are_not_called_refusals() -> None:
    error = mapped(refused(500, "InternalError"), IDENTITY)
    assert type(error) is StorageError and "answered 500 (InternalError)" in str(error)
