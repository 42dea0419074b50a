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
