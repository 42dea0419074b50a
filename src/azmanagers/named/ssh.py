"""A shell on a named cluster's head or a node through the agents (no sshd, no port 22)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import sys
import termios
import tty
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from azmanagers.agent.head_exec import worker_addresses
from azmanagers.agent.shell import MAX_FRAME_BYTES, frame, start_shell_on_worker
from azmanagers.errors import ConfigError, DetachedServiceError
from azmanagers.named.wire import HEAD_SHELL, ShellRequest
from azmanagers.state.clusters import ClusterRecord
from azmanagers.tls import ClusterCredentials, KeyPair, load_pair

if TYPE_CHECKING:
    from azmanagers.named.handle import NamedCluster

CONNECT_TIMEOUT_S = 30.0
READ_CHUNK = 65536
_HEADER = struct.Struct(">cI")


def _client_name(record: ClusterRecord) -> str:
    pair = KeyPair(record.client_cert, record.client_key)
    return ClusterCredentials(record.ca, pair, pair, pair).client_common_name()


def _client_context(record: ClusterRecord) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=record.ca)
    context.check_hostname = False  # the CA is the cluster's own; names are not addresses
    load_pair(context, record.client_cert, record.client_key)
    return context


def _window() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return size.lines, size.columns


def open_shell(
    cluster: NamedCluster, node: str | None = None, command: Sequence[str] | None = None
) -> int:
    """Run a shell (or ``command``) on the head (``node`` None) or on ``node``, relaying this
    process's terminal; return its exit status.

    With a terminal on stdin and stdout the shell runs on a pty; else on pipes, so that its
    output (stdout and stderr apart) is byte for byte what it wrote and input ends at EOF.
    A shell on a node holds a Dask client for as long as it runs (it keeps autostop off).
    """
    record: ClusterRecord = cluster.record
    rows, cols = _window()
    words = None if not command else tuple(command)
    on_tty = all(_fileno(s) >= 0 and os.isatty(_fileno(s)) for s in (sys.stdin, sys.stdout))
    if node is None:
        reply = cluster.service().request(
            "POST", HEAD_SHELL.path(), body=ShellRequest(words, rows, cols, on_tty).to_json()
        )
        if not isinstance(reply, dict) or "port" not in reply:
            raise DetachedServiceError(f"the head of cluster {record.name} answered {reply!r}")
        return _connect(record, str(reply.get("host") or record.host), int(reply["port"]), on_tty)
    with cluster.client() as client:
        address = worker_addresses(client, node)[node]
        try:
            answers = client.run(
                start_shell_on_worker,
                _client_name(record),
                None if words is None else list(words),
                rows,
                cols,
                on_tty,
                workers=[address],
            )
        except Exception as exc:  # raised on the node (a shell limit, a port): said as such
            raise DetachedServiceError(f"node {node} could not start a shell: {exc}") from None
        host, port = answers[address]
        return _connect(record, host, port, on_tty, node)


def _connect(record: ClusterRecord, host: str, port: int, on_tty: bool, node: str = "") -> int:
    where = node or record.head
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        raise DetachedServiceError(
            f"cannot reach the shell on {where} at {host}:{port}: {exc} (a node's shell needs "
            "a route to the node, e.g. from inside its virtual network)"
        ) from None
    try:
        conn = _client_context(record).wrap_socket(sock)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise DetachedServiceError(
            f"the shell on {node or record.head} refused us: {exc}"
        ) from None
    with conn:
        conn.settimeout(None)
        try:
            return _relay(conn, on_tty)
        except (ssl.SSLError, OSError) as exc:
            raise DetachedServiceError(f"the shell on {where} ended: {exc}") from None


def _relay(conn: ssl.SSLSocket, on_tty: bool) -> int:
    """Relay stdin to the shell and its output to stdout until it sends its exit status."""
    stdin = _fileno(sys.stdin)
    interactive = on_tty
    saved = termios.tcgetattr(stdin) if interactive else None
    resized = [False]

    def on_winch(signum: int, frame_: FrameType | None) -> None:
        del signum, frame_
        resized[0] = True

    old_winch = signal.signal(signal.SIGWINCH, on_winch) if interactive else None
    buffer = b""
    stdin_open = stdin >= 0
    if not stdin_open:  # no input to relay (a test runner's stdin, a closed one)
        conn.sendall(frame(b"e"))
    try:
        if interactive:
            tty.setraw(stdin, termios.TCSADRAIN)  # keep what was typed before
        while True:
            if resized[0]:
                resized[0] = False
                conn.sendall(frame(b"w", struct.pack(">HH", *_window())))
            readable: list[Any] = [conn] + ([stdin] if stdin_open else [])
            ready: list[Any] = []
            if conn.pending():
                ready = [conn]
            else:
                with contextlib.suppress(InterruptedError):
                    ready, _, _ = select.select(readable, [], [], 1.0)
            if stdin in ready:
                data = os.read(stdin, READ_CHUNK)
                if data:
                    conn.sendall(frame(b"i", data))
                else:
                    stdin_open = False
                    conn.sendall(frame(b"e"))
            if conn in ready:
                data = conn.recv(READ_CHUNK)
                if not data:
                    raise DetachedServiceError("the shell's connection ended without its status")
                buffer += data
                while len(buffer) >= _HEADER.size:
                    kind, size = _HEADER.unpack(buffer[: _HEADER.size])
                    if size > MAX_FRAME_BYTES:
                        raise DetachedServiceError("the shell sent a frame too large")
                    if len(buffer) < _HEADER.size + size:
                        break
                    body = buffer[_HEADER.size : _HEADER.size + size]
                    buffer = buffer[_HEADER.size + size :]
                    if kind == b"o":
                        _write_out(body, sys.stdout)
                    elif kind == b"r":
                        _write_out(body, sys.stderr)
                    elif kind == b"x":
                        return int(struct.unpack(">i", body)[0])
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


def _fileno(stream: Any) -> int:
    """The stream's file descriptor, or -1 when it has none (a test runner's capture)."""
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return -1


def _write_out(data: bytes, stream: Any) -> None:
    out = _fileno(stream)
    if out >= 0:
        stream.flush()
        while data:  # a pipe takes what it can at a time
            data = data[os.write(out, data) :]
    else:
        stream.write(data.decode(errors="replace"))
        stream.flush()


def check_node_name(node: object) -> str | None:
    """``node`` as given by a caller: None (the head) or a name."""
    if node is None or (isinstance(node, str) and node and "/" not in node):
        return node
    raise ConfigError(f"{node!r} is not a node name; `azm cluster nodes NAME` lists them.")
