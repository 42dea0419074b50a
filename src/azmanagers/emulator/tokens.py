"""Test-double JWTs: Entra ID's claims, signed with HMAC-SHA256 under the emulator's own key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from typing import Any

TOKEN_LIFETIME_S = 3599
"""What Entra ID gives an app token (an hour, less a second)."""
FIXED_TOKEN_LIFETIME_S = 365 * 86400
"""The emulator's own token (``server.token``): a year, for long ``azm emulator serve`` runs."""
CLOCK_SKEW_S = 300
MAX_TOKEN_CHARS = 16384
PUBLIC_ARM_AUDIENCES = ("https://management.azure.com", "https://management.core.windows.net")
"""ARM accepts tokens for either of its public audiences, as the emulator does."""
_MI_NAMESPACE = uuid.UUID("5b1f3c64-6f1e-4f53-9d1c-2f6a2f0e7a11")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def managed_identity_ids(vm_id: str) -> tuple[str, str]:
    """Return (principal id, client id) of a VM's system-assigned identity, stable per VM."""
    return str(uuid.uuid5(_MI_NAMESPACE, f"principal/{vm_id}")), str(
        uuid.uuid5(_MI_NAMESPACE, f"client/{vm_id}")
    )


class TokenIssuer:
    """Issues and checks JWT-shaped tokens, a test double of Entra ID's.

    Entra ID signs with RS256 keys it publishes at ``jwks_uri``; these tokens carry the same
    claims (``aud``, ``iss``, ``iat``, ``nbf``, ``exp``, ``tid``, ``oid``, ``appid``...) but
    are signed with HMAC-SHA256 (``alg: HS256``) under a random key that never leaves this
    process, so only the emulator can check them (``jwks_uri`` lists no key). Clients that
    read the claims without checking the signature, as az and msal do, cannot tell.
    """

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._key = secrets.token_bytes(32)

    def issue(self, claims: dict[str, Any], lifetime_s: int) -> tuple[str, int]:
        """Return a signed token with ``claims`` plus iss/iat/nbf/exp/uti, and its expiry."""
        now = int(time.time())
        body = {"iss": self.issuer, "iat": now, "nbf": now, "exp": now + lifetime_s, **claims}
        body["uti"] = secrets.token_urlsafe(16)
        header = {"typ": "JWT", "alg": "HS256", "kid": "azm-emulator"}
        signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(body).encode())}"
        return f"{signed}.{self._sign(signed)}", int(body["exp"])

    def _sign(self, signed: str) -> str:
        return _b64url(hmac.new(self._key, signed.encode(), hashlib.sha256).digest())

    def claims(self, token: str) -> dict[str, Any] | None:
        """Return a token's claims if this issuer signed it (constant-time check), else None."""
        parts = token.split(".")
        if len(token) > MAX_TOKEN_CHARS or len(parts) != 3:
            return None
        if not hmac.compare_digest(
            parts[2].encode(), self._sign(f"{parts[0]}.{parts[1]}").encode()
        ):
            return None
        try:
            claims = json.loads(_unb64url(parts[1]))
        except ValueError:
            return None
        return claims if isinstance(claims, dict) else None
