"""A one-shot shell on a node (a pty, or pipes) behind mutual TLS with the cluster's CA.

No sshd: the caller asks a node's worker (or the head's service) to ``start_shell``; it listens on a
free port for ONE connection whose client certificate the cluster's CA signed with the
client's name, runs bash (or a command) on a pty and relays it in frames:

- caller -> node: ``i`` input bytes, ``w`` window size (two 16-bit numbers: rows, cols),
  ``e`` end of input;
- node -> caller: ``o`` output bytes, ``r`` error output (without a pty), ``x`` the exit
  status (a 32-bit signed number).

Each frame is a type byte, a 32-bit big-endian length and the data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import shlex
import signal
import ssl
import struct
import termios
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from azmanagers.tls import load_pair

ACCEPT_TIMEOUT_S = 30.0
"""How long the shell waits for its one connection."""
MAX_FRAME_BYTES = 1024 * 1024
READ_CHUNK = 65536
_HEADER = struct.Struct(">cI")
_WATCHERS: set[asyncio.Future[None]] = set()
"""The accept deadlines running (kept referenced until they end)."""
_OPEN = 0
"""Shells started on this node that are waiting for their connection or running."""
MAX_SHELLS = 16
"""Shells open at once on one node (one more is refused with a clear error)."""
_WRITERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="azm-shell")
"""Writes to a pty (they may block): not in the event loop's shared executor."""


class ShellLimitError(RuntimeError):
    """Too many shells are open on this node."""


def frame(kind: bytes, data: bytes = b"") -> bytes:
    """One frame of the shell protocol."""
    return _HEADER.pack(kind, len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next frame (kind, data); IncompleteReadError at the end of the stream."""
    kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"a shell frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    return kind, await reader.readexactly(size)


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by ``ca`` (PEM texts)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    load_pair(context, cert, key)
    return context


def _peer_name(writer: asyncio.StreamWriter) -> str:
    cert: Any = writer.get_extra_info("peercert") or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


def _set_size(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _argv(command: Sequence[str] | None) -> list[str]:
    if not command:
        return ["bash", "-i"]
    return ["bash", "-c", command[0] if len(command) == 1 else shlex.join(command)]


def _cwd() -> str | None:
    cwd = os.environ.get("AZMANAGERS_INSTANCE_DIR") or os.path.expanduser("~")
    return cwd if os.path.isdir(cwd) else None


def _end_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    command: Sequence[str] | None,
    rows: int,
    cols: int,
    tty: bool,
) -> None:
    """Run the shell (on a pty when the caller has a terminal, else on pipes: its bytes as
    they are) and relay it until it exits; its process group dies with it."""
    try:
        if tty:
            await _relay_pty(reader, writer, command, rows, cols)
        else:
            await _relay_pipes(reader, writer, command)
    finally:
        _release()
        writer.close()


async def _relay_pty(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    command: Sequence[str] | None,
    rows: int,
    cols: int,
) -> None:
    master, slave = os.openpty()
    _set_size(slave, rows, cols)
    proc = await asyncio.create_subprocess_exec(
        *_argv(command),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=_cwd(),
        env={**os.environ, "TERM": os.environ.get("TERM", "xterm-256color")},
        start_new_session=True,
    )
    os.close(slave)
    loop = asyncio.get_running_loop()
    output_done = asyncio.Event()

    def on_output() -> None:
        try:
            data = os.read(master, READ_CHUNK)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(master)
            output_done.set()
            return
        writer.write(frame(b"o", data))

    loop.add_reader(master, on_output)

    async def pump_input() -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
            while True:
                kind, data = await read_frame(reader)
                if kind == b"i":
                    await loop.run_in_executor(_WRITERS, os.write, master, data)
                elif kind == b"w" and len(data) == 4:
                    _set_size(master, *struct.unpack(">HH", data))
                elif kind == b"e":
                    await loop.run_in_executor(_WRITERS, os.write, master, b"\x04")
        _end_group(proc.pid, signal.SIGHUP)  # the caller is gone: end the shell

    pump = asyncio.ensure_future(pump_input())
    try:
        code = await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(output_done.wait(), 2.0)
        writer.write(frame(b"x", struct.pack(">i", _exit_status(code))))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    finally:
        pump.cancel()
        loop.remove_reader(master)
        os.close(master)
        _end_group(proc.pid, signal.SIGKILL)


async def _relay_pipes(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: Sequence[str] | None
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_argv(command)[:1] + (["-s"] if not command else _argv(command)[1:]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=_cwd(),
        start_new_session=True,
    )
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    if stdin is None or stdout is None or stderr is None:
        raise RuntimeError("the command's pipes were not made")

    async def pump_output(stream: asyncio.StreamReader, kind: bytes) -> None:
        while data := await stream.read(READ_CHUNK):
            writer.write(frame(kind, data))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def pump_input() -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
            while True:
                kind, data = await read_frame(reader)
                if kind == b"i":
                    stdin.write(data)
                    await stdin.drain()
                elif kind == b"e":
                    stdin.close()
        _end_group(proc.pid, signal.SIGHUP)  # the caller is gone: end the command

    outputs = [
        asyncio.ensure_future(pump_output(stdout, b"o")),
        asyncio.ensure_future(pump_output(stderr, b"r")),
    ]
    pump = asyncio.ensure_future(pump_input())
    try:
        code = await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*outputs), 2.0)
        writer.write(frame(b"x", struct.pack(">i", _exit_status(code))))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    finally:
        pump.cancel()
        for task in outputs:
            task.cancel()
        _end_group(proc.pid, signal.SIGKILL)


def _release() -> None:
    global _OPEN
    _OPEN = max(0, _OPEN - 1)


def _exit_status(code: int) -> int:
    """A shell's status as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - code if code < 0 else code


def open_shells() -> int:
    """How many shells run on this node now (a head counts them as activity)."""
    return _OPEN


async def start_shell(
    host: str,
    tls: dict[str, str],
    client_name: str,
    command: Sequence[str] | None = None,
    rows: int = 24,
    cols: int = 80,
    tty: bool = True,
) -> int:
    """Listen on ``host`` (a free port) for one connection from ``client_name``'s certificate
    and run the shell for it (on a pty with ``tty``, else on pipes); return the port. Gives
    up after ``ACCEPT_TIMEOUT_S``; ShellLimitError when ``MAX_SHELLS`` are open."""
    global _OPEN
    if _OPEN >= MAX_SHELLS:
        raise ShellLimitError(
            f"{_OPEN} shells are open on this node (at most {MAX_SHELLS}); close one first."
        )
    context = server_context(tls["ca"], tls["cert"], tls["key"])
    _OPEN += 1  # reserved from now: until its connection's shell ends, or nobody came
    taken = asyncio.Event()
    holder: list[asyncio.Server] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if taken.is_set() or _peer_name(writer) != client_name:
            writer.close()
            return
        taken.set()
        holder[0].close()  # one shell per start
        await _relay(reader, writer, command, rows, cols, tty)

    try:
        server = await asyncio.start_server(handle, host, 0, ssl=context)
    except OSError:
        _release()
        raise
    holder.append(server)

    async def expire() -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(taken.wait(), ACCEPT_TIMEOUT_S)
        if not taken.is_set():
            server.close()
            _release()

    task = asyncio.ensure_future(expire())
    _WATCHERS.add(task)
    task.add_done_callback(_WATCHERS.discard)
    return int(server.sockets[0].getsockname()[1])


async def start_shell_on_worker(
    client_name: str,
    command: list[str] | None,
    rows: int,
    cols: int,
    tty: bool = True,
    dask_worker: Any = None,
) -> tuple[str, int]:
    """``start_shell`` on a Dask worker (``client.run`` passes ``dask_worker``), with the
    worker's key pair; return (host, port)."""
    security = dask_worker.security
    tls = {
        "ca": _pem(security.tls_ca_file),
        "cert": _pem(security.tls_worker_cert),
        "key": _pem(security.tls_worker_key),
    }
    host = str(dask_worker.ip)
    port = await start_shell(host, tls, client_name, command, rows, cols, tty)
    return host, port


def _pem(value: str) -> str:
    """Dask keeps a PEM text, or a file's path."""
    if "-----BEGIN" in value:
        return value
    return Path(value).read_text()
