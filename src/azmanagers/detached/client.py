"""The HTTPS client of one detached service: pinned certificate, bearer token, JSON errors."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from azmanagers.errors import DetachedServiceError, JobNotFoundError

KEEPALIVE_S = 60.0
"""A connection idle longer than this is not reused (the service drops them at 120 s)."""
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
        self._lock = threading.Lock()
        self._conn: http.client.HTTPSConnection | None = None
        self._used_at = 0.0

    def _connection(self, timeout_s: float) -> tuple[http.client.HTTPSConnection, bool]:
        """A kept-alive connection when a recent one exists, else a new pinned one."""
        if self._conn is not None and time.monotonic() - self._used_at > KEEPALIVE_S:
            self.close()
        if self._conn is not None:
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout_s)
            return self._conn, False
        conn = http.client.HTTPSConnection(
            self.address.host, self.address.port, context=self._context, timeout=timeout_s
        )
        conn.connect()
        self._check_pin(conn)
        self._conn = conn
        return conn, True

    def close(self) -> None:
        """Close the kept-alive connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
        # Resending is safe for all but a new job: only that is never sent twice.
        may_resend = not (method == "POST" and path == "/v1/jobs")
        where = f"the detached service of VM {self.address.name}"
        with self._lock:
            while True:
                try:
                    conn, fresh = self._connection(timeout_s)
                    try:
                        conn.request(method, url, body=data, headers=headers)
                        reply = conn.getresponse()
                        payload = reply.read()
                    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                        self.close()
                        if fresh or not may_resend:
                            raise
                        continue  # the service closed an idle kept-alive connection
                except (ssl.SSLCertVerificationError, _PinMismatch) as exc:
                    self.close()
                    raise DetachedServiceError(
                        f"{where} ({self.address.host}:{self.address.port}) did not present its "
                        f"pinned certificate: {exc}"
                    ) from exc
                except (OSError, http.client.HTTPException) as exc:
                    self.close()
                    raise DetachedServiceError(
                        f"cannot reach {where} at {self.address.host}:{self.address.port}: "
                        f"{exc}. Is the VM running (azm vm list)?"
                    ) from exc
                break
            self._used_at = time.monotonic()
            if reply.will_close:
                self.close()
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
