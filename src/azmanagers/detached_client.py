"""The HTTPS client of one detached service: pinned certificate, bearer token, JSON errors."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from azmanagers.errors import DetachedServiceError, JobNotFoundError

REQUEST_TIMEOUT_S = 30.0
"""How long one request may take beyond its own wait (a wait request adds its timeout)."""


@dataclass(frozen=True)
class ServiceAddress:
    """Where a detached service listens and how to trust it."""

    name: str
    host: str
    port: int
    cert: str = field(repr=False)
    """The service's self-signed certificate (PEM): the only one trusted for it."""
    fingerprint: str
    """Its SHA-256 fingerprint: checked on every connection."""
    token: str = field(repr=False)


class _PinMismatch(OSError):
    """The service's certificate is not the one pinned for it."""


class ServiceClient:
    """Calls one detached service. Every failure raises a ``DetachedServiceError``."""

    def __init__(self, address: ServiceAddress) -> None:
        self.address = address
        self._context = ssl.create_default_context(cadata=address.cert)
        self._context.check_hostname = False  # the pinned certificate names the VM, not its IP

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        raw: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON (or ``(bytes, headers)`` with ``raw``)."""
        url = path + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.address.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPSConnection(
            self.address.host, self.address.port, context=self._context, timeout=timeout_s
        )
        where = f"the detached service of VM {self.address.name}"
        try:
            conn.connect()
            self._check_pin(conn)
            conn.request(method, url, body=data, headers=headers)
            reply = conn.getresponse()
            payload = reply.read()
        except (ssl.SSLCertVerificationError, _PinMismatch) as exc:
            raise DetachedServiceError(
                f"{where} ({self.address.host}:{self.address.port}) did not present its pinned "
                f"certificate: {exc}"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DetachedServiceError(
                f"cannot reach {where} at {self.address.host}:{self.address.port}: {exc}. "
                "Is the VM running (azm vm list)?"
            ) from exc
        finally:
            conn.close()
        if reply.status >= 400:
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload[:200].decode(errors="replace")
            if reply.status == 404 and "/v1/jobs/" in path:
                raise JobNotFoundError(f"{where}: {message}")
            raise DetachedServiceError(f"{where} answered {reply.status}: {message}")
        if raw:
            return payload, {k.lower(): v for k, v in reply.getheaders()}
        return json.loads(payload) if payload else None

    def _check_pin(self, conn: http.client.HTTPSConnection) -> None:
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if der is None or hashlib.sha256(der).hexdigest() != self.address.fingerprint:
            raise _PinMismatch(
                "the certificate's fingerprint differs from the one recorded for this VM"
            )
