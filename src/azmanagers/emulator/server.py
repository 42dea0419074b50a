"""The emulator's HTTPS server: routing, bearer-token check, ARM error bodies, a call log."""

from __future__ import annotations

import json
import re
import secrets
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azmanagers.emulator.names import name_problem
from azmanagers.tls import make_cluster_credentials

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_FORM_BYTES = 64 * 1024
"""Bodies of the routes served without a token (the token endpoint's form)."""
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 60.0
"""A connection that sends nothing for this long is closed (clients reconnect)."""
MAX_CALLS = 100_000
"""The call log keeps the newest this many calls."""
ADMIN_PREFIX = "/azmanagers-admin/"
"""Routes of the emulator itself (faults, state), outside ARM's namespace; token required."""
BLOB_PREFIX = "/azmanagers-blob/"
"""Blob downloads (boot logs): authorised by the URL's signature, like a SAS, not a token."""
SUBSCRIPTION_PATH = r"/subscriptions/(?P<sub>[^/]+)"
GROUP_PATH = SUBSCRIPTION_PATH + r"/resourceGroups/(?P<rg>[^/]+)"
"""Route patterns every resource path begins with."""


@dataclass(frozen=True)
class Call:
    """One request the emulator answered."""

    method: str
    path: str
    status: int
    query: str = ""
    user_agent: str = ""
    """The client's ``User-Agent``: azure-core appends ``AZURE_HTTP_USER_AGENT`` to it, so a
    process can find its own calls among others'."""


@dataclass
class Request:
    """What a route handler sees."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    match: re.Match[str]
    base_url: str


@dataclass
class Response:
    """What a route handler returns."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class ArmError(Exception):
    """Raised by handlers: becomes an ARM error body ``{"error": {"code", "message"}}``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


Handler = Callable[[Request], Response]


class Router:
    """Routes (method, path regex) to handlers; ARM paths are case-insensitive."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` on paths matching ``pattern`` (whole path)."""
        self._routes.append((method, re.compile(pattern + r"/?$", re.IGNORECASE), handler))

    def find(self, method: str, path: str) -> tuple[Handler, re.Match[str]] | None:
        """Return the handler and match for a request, or None."""
        methods_seen = False
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match:
                methods_seen = True
                if route_method == method:
                    return handler, match
        if methods_seen:
            raise ArmError(405, "MethodNotAllowed", f"{method} is not supported on {path}.")
        return None


class EmulatorServer:
    """An HTTPS server on 127.0.0.1 with a CA of its own and a bearer token.

    Parameters
    ----------
    router
        The routes it serves.
    token
        A bearer token requests may carry (when not given: a JWT of the emulator's service
        principal, valid a year); tokens from the emulator's token endpoint and IMDS work too.
    folder
        Where the CA certificate is written (a temporary folder when not given).
    """

    def __init__(
        self,
        router: Router,
        *,
        token: str | None = None,
        folder: Path | None = None,
        before_route: Callable[[str], dict[str, str]] | None = None,
        admin: Router | None = None,
    ) -> None:
        self.router = router
        self.admin = admin
        self.before_route = before_route
        self.check_body: Callable[[Any], None] | None = None
        """Checks every PUT and PATCH body before its route (set by whoever builds the server)."""
        self.calls: list[Call] = []
        self.calls_dropped = 0
        """How many of the oldest calls were dropped from ``calls`` (it holds at most
        ``MAX_CALLS``, so a long-lived emulator's memory stays bounded)."""
        self._calls_lock = threading.Lock()
        self._tmp = None if folder is not None else tempfile.TemporaryDirectory(prefix="azm-emu-")
        self.folder = folder if folder is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        creds = make_cluster_credentials("emulator", ["127.0.0.1", "localhost"])
        self.ca_file = self.folder / "emulator-ca.pem"
        self.ca_file.write_text(creds.ca)
        cert_file = self.folder / "emulator-cert.pem"
        cert_file.write_text(creds.scheduler.cert + creds.scheduler.key)
        cert_file.chmod(0o600)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file)
        self._httpd = _TlsServer(("127.0.0.1", 0), _make_handler(self), context)
        self.port = self._httpd.server_address[1]
        self.base_url = f"https://127.0.0.1:{self.port}"
        # identity imports this module's types: imported here, once they exist
        from azmanagers.emulator.identity import SignIn, add_sign_in_routes
        from azmanagers.emulator.tokens import FIXED_TOKEN_LIFETIME_S

        self.sign_in = SignIn(self.base_url)
        """The emulator's Entra ID tenant: its service principal, and the tokens it accepts."""
        self.public = Router()
        """What Azure serves without a token: metadata, tenant discovery, the token endpoint."""
        add_sign_in_routes(self.public, self.sign_in)
        self.token = token or self.sign_in.app_token(f"{self.base_url}/", FIXED_TOKEN_LIFETIME_S)[0]
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorServer:
        """Serve in a background thread; return self."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="azm-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def record(self, call: Call) -> None:
        """Append a call to the log; past ``MAX_CALLS`` the oldest quarter is dropped."""
        with self._calls_lock:
            self.calls.append(call)
            if len(self.calls) > MAX_CALLS:
                dropped = MAX_CALLS // 4
                del self.calls[:dropped]
                self.calls_dropped += dropped

    def calls_since(self, index: int) -> tuple[int, list[Call]]:
        """Return the index of the first call still held from ``index`` on, and those calls
        (indexes count every call since the start, dropped ones too)."""
        with self._calls_lock:
            first = max(index, self.calls_dropped)
            return first, self.calls[first - self.calls_dropped :]

    def calls_matching(self, method: str | None = None, contains: str = "") -> list[Call]:
        """Return logged calls with this method whose path contains ``contains``."""
        with self._calls_lock:
            return [
                c
                for c in self.calls
                if (method is None or c.method == method) and contains.lower() in c.path.lower()
            ]


class _TlsServer(ThreadingHTTPServer):
    """Each connection's TLS handshake happens in its own thread, bounded: a client that
    connects and says nothing never holds up the accept loop."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
    ) -> None:
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # the plain socket is closed by shutdown_request
        try:
            tls.settimeout(IDLE_TIMEOUT_S)
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            # the answer first, then the close: a close with an unread body sends a reset
            # that can overtake the answer (a refused request's body is never read)
            self.shutdown_request(tls)


def _make_handler(server: EmulatorServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

        def log_message(self, format: str, *args: Any) -> None:
            """Silence the default stderr log (the call log records requests)."""

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            # the SDKs quote names (``my(rg)`` comes as ``my%28rg%29``); a quoted "/" becomes a
            # separator, so no route matches it (no Azure name holds one)
            path = "/".join(unquote(segment) for segment in parts.path.split("/"))
            # HEAD (``az group exists``) is GET without the body: 204 when the resource exists
            method = "GET" if self.command == "HEAD" else self.command
            try:
                response = self._dispatch(method, path, parts.query)
            except ArmError as err:
                response = Response(
                    err.status, {"error": {"code": err.code, "message": str(err)}}, err.headers
                )
            except Exception as exc:  # a bug in the emulator: an ARM-shaped 500
                response = Response(
                    500, {"error": {"code": "InternalServerError", "message": repr(exc)}}
                )
            status = response.status
            if self.command == "HEAD":
                response.body, status = None, 204 if status == 200 else status
            if isinstance(response.body, str):
                payload, content_type = response.body.encode(), "text/plain; charset=utf-8"
            else:
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                content_type = "application/json; charset=utf-8"
            agent = self.headers.get("User-Agent", "")
            # logged before the client can see the answer
            server.record(Call(self.command, parts.path, status, parts.query, agent))
            self.send_response(status)
            for key, value in response.headers.items():
                self.send_header(key, value)
            if payload:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-ms-request-id", secrets.token_hex(8))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        def _read_body(self, limit: int) -> bytes:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True  # the body stays unread
                raise ArmError(411, "LengthRequired", "Send the body with a Content-Length.")
            text = (self.headers.get("Content-Length") or "0").strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 12):
                self.close_connection = True
                raise ArmError(400, "InvalidHeader", f"Content-Length {text[:20]!r} is invalid.")
            length = int(text)
            if length > limit:
                self.close_connection = True  # the body stays unread
                raise ArmError(413, "RequestEntityTooLarge", "The request body is too large.")
            return self.rfile.read(length) if length else b""

        def _dispatch(self, method: str, path: str, query_text: str) -> Response:
            query = {k: v[-1] for k, v in parse_qs(query_text).items()}
            if path.startswith(BLOB_PREFIX) and server.admin is not None and method == "GET":
                found = server.admin.find("GET", path)
                if found is None:
                    raise ArmError(404, "BlobNotFound", "The specified blob does not exist.")
                handler, match = found
                return handler(Request("GET", path, query, None, match, server.base_url))
            public = server.public.find(method, path)
            if public is not None:  # Entra ID's forms: the last value of each field
                form = parse_qs(self._read_body(MAX_FORM_BYTES).decode("utf-8", "replace"))
                fields = {k: v[-1] for k, v in form.items()}
                handler, match = public
                return handler(Request(method, path, query, fields, match, server.base_url))
            try:
                server.sign_in.authenticate(self.headers.get("Authorization", ""), server.token)
            except ArmError:
                if self.headers.get("Content-Length", "0") != "0" or self.headers.get(
                    "Transfer-Encoding"
                ):
                    self.close_connection = True  # refused before its body is read
                raise
            raw = self._read_body(MAX_BODY_BYTES)
            try:
                body = json.loads(raw) if raw else None
            except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, too deep
                raise ArmError(
                    400, "InvalidRequestContent", f"The body is not JSON: {exc}"[:300]
                ) from exc
            if path.startswith(ADMIN_PREFIX) and server.admin is not None:
                found = server.admin.find(method, path)
                if found is None:
                    raise ArmError(404, "NotFound", f"No admin route {path}.")
                handler, match = found
                return handler(Request(method, path, query, body, match, server.base_url))
            if "api-version" not in query:
                raise ArmError(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )
            extra: dict[str, str] = {}
            if server.before_route is not None:
                # rate limits and fault injection: headers to add, or a 429/503 raised
                extra = server.before_route(method)
            found = server.router.find(method, path)
            if found is None:
                raise ArmError(404, "InvalidResourceType", f"No route for {path}.", extra)
            handler, match = found
            problem = name_problem(path) if method == "PUT" else None
            if problem is not None:
                raise ArmError(400, "InvalidResourceName", problem, extra)
            if method in ("PUT", "PATCH") and server.check_body is not None:
                try:
                    server.check_body(body)
                except ArmError as err:
                    err.headers = {**extra, **err.headers}
                    raise
            try:
                response = handler(Request(method, path, query, body, match, server.base_url))
            except ArmError as err:
                err.headers = {**extra, **err.headers}
                raise
            response.headers = {**extra, **response.headers}
            return response

        do_GET = do_HEAD = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

    return _Handler
