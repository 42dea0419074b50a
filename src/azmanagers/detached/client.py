"""The HTTPS client of one detached service: pinned certificate, bearer token, JSON errors."""

from __future__ import annotations

import hashlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from azmanagers.detached import wire
from azmanagers.errors import DetachedServiceError, JobNotFoundError, ServiceRefusedError

_T = TypeVar("_T")

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

    def __init__(self, address: ServiceAddress, what: str = "", hint: str = "") -> None:
        self.address = address
        self.what = what or f"the detached service of VM {address.name}"
        """How errors name the service (a head: "the head of cluster NAME")."""
        self.hint = hint or "Is the VM running (azm vm list)?"
        """What an error of reaching it suggests."""
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
        data = wire.encode_body(body) if body is not None else None
        headers = {"Authorization": f"Bearer {self.address.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        # Resending is safe for all but a new job: only that is never sent twice.
        may_resend = not (method == "POST" and path == wire.JOBS.path())
        where = self.what
        with self._lock:
            while True:
                try:
                    conn, fresh = self._connection(timeout_s)
                    try:
                        conn.request(method, url, body=data, headers=headers)
                        reply = conn.getresponse()
                        payload = reply.read()
                    except (
                        http.client.RemoteDisconnected,
                        ConnectionResetError,
                        BrokenPipeError,
                        ssl.SSLEOFError,
                        ssl.SSLZeroReturnError,
                    ):
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
                        f"{exc}. {self.hint}"
                    ) from exc
                break
            self._used_at = time.monotonic()
            if reply.will_close:
                self.close()
        if reply.status >= 400:
            if reply.status in (401, 405, 413):
                self.close()  # refused before its body: the service closes the connection
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload[:200].decode(errors="replace")
            if reply.status == 404 and "/v1/jobs/" in path:
                raise JobNotFoundError(f"{where}: {message}")
            raise ServiceRefusedError(f"{where} answered {reply.status}: {message}", reply.status)
        if raw:
            return payload, {k.lower(): v for k, v in reply.getheaders()}
        return json.loads(payload) if payload else None

    # -- typed calls: each returns the record of the wire format -----------------------
    def _parsed(self, parse: Callable[[object], _T], value: object) -> _T:
        try:
            return parse(value)
        except wire.WireError as exc:
            raise DetachedServiceError(
                f"the detached service of VM {self.address.name} answered something "
                f"unexpected: {exc}. Are both ends the same azmanagers version?"
            ) from None

    def ping(self, timeout_s: float = REQUEST_TIMEOUT_S) -> wire.Ping:
        """Whether the service answers (and its VM's name)."""
        return self._parsed(
            wire.Ping.from_json, self.request("GET", wire.PING.path(), timeout_s=timeout_s)
        )

    def vm_info(self) -> wire.ServiceInfo:
        """The VM as its service describes it."""
        return self._parsed(wire.ServiceInfo.from_json, self.request("GET", wire.VM.path()))

    def submit(self, job: wire.JobRequest, timeout_s: float = REQUEST_TIMEOUT_S) -> wire.JobInfo:
        """Start a job (never sent twice); return its record."""
        reply = self.request("POST", wire.JOBS.path(), body=job.to_json(), timeout_s=timeout_s)
        return self._parsed(wire.JobInfo.from_json, reply)

    def jobs(self) -> list[wire.JobInfo]:
        """Every job of the VM, oldest first."""
        reply = self.request("GET", wire.JOBS.path())
        items = reply.get("jobs") if isinstance(reply, dict) else None
        if not isinstance(items, list):
            return self._parsed(_no_list, reply)
        return [self._parsed(wire.JobInfo.from_json, item) for item in items]

    def job(self, job_id: str) -> wire.JobInfo:
        """A job's record."""
        reply = self.request("GET", wire.JOB.path(job_id=job_id))
        return self._parsed(wire.JobInfo.from_json, reply)

    def output(self, job_id: str, stream: str, offset: int) -> wire.OutputChunk:
        """Bytes of a job's ``stdout`` or ``stderr`` from ``offset``."""
        data, headers = self.request(
            "GET",
            wire.JOB_OUTPUT.path(job_id=job_id, stream=stream),
            query={"offset": offset},
            raw=True,
        )
        next_offset = int(headers.get(wire.NEXT_OFFSET_HEADER.lower(), offset + len(data)))
        size = int(headers.get(wire.SIZE_HEADER.lower(), next_offset))
        return wire.OutputChunk(data=data, size=size, next_offset=next_offset)

    def wait(self, job_id: str, timeout_s: float) -> wire.JobInfo:
        """Block up to ``timeout_s`` (the service caps one wait) for the job to finish."""
        reply = self.request(
            "POST",
            wire.JOB_WAIT.path(job_id=job_id),
            query={"timeout": max(timeout_s, 0.0)},
            timeout_s=max(timeout_s, 0.0) + REQUEST_TIMEOUT_S,
        )
        return self._parsed(wire.JobInfo.from_json, reply)

    def kill(self, job_id: str) -> wire.JobInfo:
        """Stop a job's processes; return its record."""
        reply = self.request("POST", wire.JOB_KILL.path(job_id=job_id))
        return self._parsed(wire.JobInfo.from_json, reply)

    def result(self, job_id: str) -> wire.JobResult:
        """A finished job's outcome."""
        reply = self.request("GET", wire.JOB_RESULT.path(job_id=job_id))
        return self._parsed(wire.JobResult.from_json, reply)

    def _check_pin(self, conn: http.client.HTTPSConnection) -> None:
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if der is None or hashlib.sha256(der).hexdigest() != self.address.fingerprint:
            raise _PinMismatch(
                "the certificate's fingerprint differs from the one recorded for this VM"
            )


def _no_list(value: object) -> list[wire.JobInfo]:
    raise wire.WireError(f"a job list must hold 'jobs', got {str(value)[:100]!r}")
