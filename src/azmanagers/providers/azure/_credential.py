"""A static bearer-token credential, as azure-core expects one (for the emulator)."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo

TOKEN_LIFETIME_S = 3600


class StaticTokenCredential:
    """Hands out one fixed token; never printed (its repr hides it)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenCredential(<hidden>)"

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Return the token, valid for an hour from now."""
        del scopes, kwargs
        return AccessToken(self._token, int(time.time()) + TOKEN_LIFETIME_S)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        """Return the token as AccessTokenInfo (the newer azure-core protocol)."""
        del scopes, options
        return AccessTokenInfo(self._token, int(time.time()) + TOKEN_LIFETIME_S)


IMDS_TOKEN_API_VERSION = "2018-02-01"
ARM_RESOURCE = "https://management.azure.com/"
IMDS_TIMEOUT_S = 10.0
REFRESH_BEFORE_S = 300


class ImdsIdentityCredential:
    """The VM's managed identity through the IMDS at ``AZMANAGERS_IMDS_ENDPOINT``.

    A VM the emulator runs names its IMDS this way (Azure's own is found by
    ``DefaultAzureCredential``); the token is cached until five minutes before it expires.
    """

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._token: AccessToken | None = None

    def __repr__(self) -> str:
        return f"ImdsIdentityCredential({self._endpoint!r})"

    def _fetch(self) -> AccessToken:
        import json
        import urllib.parse
        import urllib.request

        from azmanagers.errors import ProviderError

        if self._token is not None and self._token.expires_on - REFRESH_BEFORE_S > time.time():
            return self._token
        query = urllib.parse.urlencode(
            {"api-version": IMDS_TOKEN_API_VERSION, "resource": ARM_RESOURCE}
        )
        request = urllib.request.Request(
            f"{self._endpoint}/metadata/identity/oauth2/token?{query}",
            headers={"Metadata": "true"},
        )
        try:
            with urllib.request.urlopen(request, timeout=IMDS_TIMEOUT_S) as reply:
                data = json.loads(reply.read())
            token = str(data["access_token"])
            expires = int(data.get("expires_on") or time.time() + TOKEN_LIFETIME_S)
        except (OSError, ValueError, KeyError) as exc:
            raise ProviderError(
                f"this VM's managed identity gave no token (IMDS at {self._endpoint}): {exc}. "
                "Give the VM template a system-assigned identity with a role on the group."
            ) from None
        self._token = AccessToken(token, expires)
        return self._token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """Return the identity's ARM token."""
        del scopes, kwargs
        return self._fetch()

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        """Return the token as AccessTokenInfo."""
        del scopes, options
        token = self._fetch()
        return AccessTokenInfo(token.token, token.expires_on)
