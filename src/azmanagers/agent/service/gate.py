"""The detached service's door: a bounded number of connections, each soon authenticated."""

from __future__ import annotations

import logging

import tornado.httpserver
import tornado.ioloop
import tornado.iostream
from tornado.http1connection import HTTP1ServerConnection

logger = logging.getLogger("azmanagers.detached")

MAX_CONNECTIONS = 256
"""The most connections the service keeps open at once (each costs a descriptor and memory)."""
FIRST_REQUEST_S = 10.0
"""How long a new connection may take (TLS handshake and headers) to make an authenticated
request; one that has not is closed. An authenticated connection then stays open while it is
used (``app.IDLE_S`` between requests)."""


class ConnectionGate:
    """Counts the open connections and which of them sent a valid token.

    At the cap, a new connection closes the oldest one that never authenticated (a flood of
    idle sockets then takes turns among itself, and a real client still gets in); when
    every open connection has authenticated, the new one is closed at once.
    """

    def __init__(
        self, max_connections: int = MAX_CONNECTIONS, first_request_s: float = FIRST_REQUEST_S
    ) -> None:
        if max_connections < 1 or not first_request_s > 0:
            raise ValueError("a gate needs at least one connection and a positive first wait")
        self.max_connections = max_connections
        self.first_request_s = first_request_s
        self._streams: dict[tornado.iostream.IOStream, bool] = {}
        """Open connections, oldest first, each with whether it has authenticated."""

    def __len__(self) -> int:
        return len(self._streams)

    def admit(self, stream: tornado.iostream.IOStream) -> bool:
        """Take a new connection (closing another, or it, at the cap); True when taken."""
        if len(self._streams) >= self.max_connections:
            victim = next((s for s, ok in self._streams.items() if not ok), None)
            if victim is None:
                stream.close()
                return False
            self._streams.pop(victim)
            victim.close()
        self._streams[stream] = False
        tornado.ioloop.IOLoop.current().call_later(self.first_request_s, self._expire, stream)
        return True

    def authenticated(self, stream: tornado.iostream.IOStream) -> None:
        """Mark a connection that sent a request with a valid token."""
        if stream in self._streams:
            self._streams[stream] = True

    def forget(self, stream: tornado.iostream.IOStream) -> None:
        """A connection closed."""
        self._streams.pop(stream, None)

    def _expire(self, stream: tornado.iostream.IOStream) -> None:
        if self._streams.get(stream) is False:
            self._streams.pop(stream)
            stream.close()


class GatedHTTPServer(tornado.httpserver.HTTPServer):
    """tornado's HTTP server behind a ``ConnectionGate`` (set ``gate`` before listening)."""

    gate: ConnectionGate

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[str, int]) -> None:
        """Serve a new connection if the gate takes it."""
        if self.gate.admit(stream):
            super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        """A connection ended: the gate forgets it."""
        super().on_close(server_conn)
        if isinstance(server_conn, HTTP1ServerConnection):
            self.gate.forget(server_conn.stream)
