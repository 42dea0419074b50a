#!/usr/bin/env python3
"""The launch protocol of multi-node runs: the ssh stand-in MPI calls, and the members' listener."""

# Standard library only: the shim (``python3 mpishim.py [-x] HOST CMD...``) starts once per
# launch. MPICH's Hydra (``HYDRA_LAUNCHER=ssh``, ``HYDRA_LAUNCHER_EXEC``) and Open MPI
# (``plm_ssh_agent``) call it as they would call ssh. It reads the launch map from the file
# named by ``AZM_MPI_LAUNCH`` (JSON, mode 0600: ``token``, ``ca``/``cert``/``key`` paths,
# ``ports`` {host: port}, ``self``: the primary's own host). For its own host it runs CMD here;
# for another it connects to that member's ``LaunchServer`` with mutual TLS (the cluster's CA),
# sends the token and the command, relays the command's stdout and stderr, and exits with its
# status (255 when the connection fails or drops, as ssh does). The member runs each command in
# a process group of its own and kills it when the connection drops.
#
# The frames (a type byte, a 32-bit big-endian length, the data): to the member ``t`` the token,
# ``a`` the launch (JSON: ``argv``, ``cwd``); from it ``o`` stdout, ``r`` stderr, ``x`` the exit
# status (a 32-bit signed number).

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

LAUNCH_MAP_VARIABLE = "AZM_MPI_LAUNCH"
HOST_VARIABLE = "AZM_MPI_HOST"
"""Set for every launched command: the host (member) it runs on."""
CONNECT_TIMEOUT_S = 30.0
MAX_FRAME_BYTES = 1024 * 1024
CONNECTION_FAILED = 255
HEADER = struct.Struct(">cI")
READ_CHUNK = 65536
TOKEN_FRAME_BYTES = 64
"""The most a launch connection may send before its token is checked."""
HANDSHAKE_TIMEOUT_S = 10.0
"""How long a launch connection has to send its token and command."""
SERVER_TIMEOUT_S = 10.0
"""To start or stop a launch listener."""
OUTPUT_DRAIN_S = 2.0
_OPTIONS_WITH_VALUE = frozenset("bcDEeFIiJLlmOopQRSWw")
"""ssh's options that take a value (``-o opt``, ``-p port``, ...): skipped with it."""


def frame(kind: bytes, data: bytes = b"") -> bytes:
    """One frame of the launch protocol."""
    return HEADER.pack(kind, len(data)) + data


def split_arguments(args: list[str]) -> tuple[str, list[str]]:
    """ssh's command line: (host, command words); options before the host are skipped."""
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        option = args[i]
        i += 1
        if len(option) == 2 and option[1] in _OPTIONS_WITH_VALUE:
            i += 1  # its value
    if i < len(args) and args[i] == "--":
        i += 1
    if i >= len(args):
        raise ValueError("usage: mpishim [-x] [-o OPTION]... HOST COMMAND...")
    host = args[i].rsplit("@", 1)[-1]  # user@host: the user is this one anyway
    return host, args[i + 1 :]


def _read_exactly(conn: ssl.SSLSocket, size: int) -> bytes:
    chunks = []
    while size:
        data = conn.recv(size)
        if not data:
            raise ConnectionError("the member closed the connection")
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


def _read_frame(conn: ssl.SSLSocket) -> tuple[bytes, bytes]:
    kind, size = HEADER.unpack(_read_exactly(conn, HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise ConnectionError(f"a frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    return kind, _read_exactly(conn, size)


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """Mutual TLS with the cluster's CA (paths). The members' certificates name no address,
    so the CA's signature is what is checked, not the host name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    return context


def run_remote(launch: dict[str, object], host: str, command: list[str]) -> int:
    """Run ``command`` on ``host``'s member; relay its output; return its exit status."""
    ports = launch.get("ports")
    port = ports.get(host) if isinstance(ports, dict) else None
    if not isinstance(port, int) or port <= 0:
        sys.stderr.write(f"azm-mpi-launch: {host} is not a node of this run\n")
        return CONNECTION_FAILED
    context = client_context(str(launch["ca"]), str(launch["cert"]), str(launch["key"]))
    request = json.dumps({"argv": command, "cwd": os.getcwd()}).encode()
    try:
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        with raw, context.wrap_socket(raw) as conn:
            conn.settimeout(None)  # the command may run for days
            conn.sendall(frame(b"t", str(launch["token"]).encode()) + frame(b"a", request))
            while True:
                kind, data = _read_frame(conn)
                if kind == b"o":
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                elif kind == b"r":
                    sys.stderr.buffer.write(data)
                    sys.stderr.buffer.flush()
                elif kind == b"x" and len(data) == 4:
                    return int(struct.unpack(">i", data)[0]) & 0xFF
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"azm-mpi-launch: the launch on {host}:{port} failed: {exc}\n")
        return CONNECTION_FAILED


def server_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A member's side: requires a client certificate the cluster's CA signed (PEM texts)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    with tempfile.TemporaryDirectory(prefix="azm-launch-") as tmp:  # ssl reads pairs from files
        cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, text in ((cert_file, cert), (key_file, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        context.load_cert_chain(cert_file, key_file)
    return context


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class LaunchServer:
    """A secondary's launch listener: mutual TLS, the gang's token first, then one command
    per connection in a process group of its own, killed when the connection drops."""

    def __init__(
        self,
        host: str,
        tls: tuple[str, str, str],
        token: str,
        env: dict[str, str],
        run_dir: Path,
    ) -> None:
        self.host, self.token, self.run_dir = host, token.encode(), run_dir
        self.env = {**env, HOST_VARIABLE: host}
        self.context = server_context(*tls)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="azm-mpi-launches", daemon=True
        )
        self.lock = threading.Lock()
        self.groups: set[int] = set()
        self.links: list[Path] = []
        self.running = 0
        self.server: asyncio.Server | None = None

    def start(self) -> int:
        """Listen on a free port of the worker's address; return the port."""
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        try:
            return future.result(SERVER_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    async def _listen(self) -> int:
        self.server = await asyncio.start_server(
            self._handle,
            self.host,
            0,
            ssl=self.context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,  # a peer that never speaks TLS goes
        )
        return int(self.server.sockets[0].getsockname()[1])

    def kill_all(self) -> None:
        with self.lock:
            groups = list(self.groups)
        for pid in groups:
            _kill_group(pid)

    def close(self) -> None:
        """Stop listening, kill every launch, stop the thread."""
        self.kill_all()
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(
                    SERVER_TIMEOUT_S
                )
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(SERVER_TIMEOUT_S)
        if not self.thread.is_alive():
            self.loop.close()
        self.kill_all()
        for link in self.links:
            with contextlib.suppress(OSError):
                link.unlink()

    async def _shutdown(self) -> None:
        if self.server is not None:
            self.server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SERVER_TIMEOUT_S / 2)

    def _cwd(self, asked: object) -> Path:
        """Where a launch runs: the primary's folder when it exists here (one machine); else
        the primary's attempt folder is made a link to this member's, so that the paths the
        launcher passes on (the working directory, TMPDIR) resolve here too."""
        if not isinstance(asked, str) or not asked:
            return self.run_dir
        path = Path(asked)
        if path.is_dir():
            return path
        attempt = path.parent
        with contextlib.suppress(OSError):
            if attempt.parent.is_dir() and not attempt.exists():
                attempt.symlink_to(self.run_dir.parent, target_is_directory=True)
                with self.lock:
                    self.links.append(attempt)
        return path if path.is_dir() else self.run_dir

    async def _handshake(self, reader: asyncio.StreamReader) -> dict[str, Any] | None:
        kind, data = await _read_frame_async(reader, TOKEN_FRAME_BYTES)  # nothing more first
        if kind != b"t" or not hmac.compare_digest(data, self.token):
            return None
        kind, data = await _read_frame_async(reader)
        request = json.loads(data) if kind == b"a" else None
        if not isinstance(request, dict):
            return None
        argv = request.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            return None
        return request

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(self._handshake(reader), HANDSHAKE_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, OSError):
            request = None
        if request is None:
            writer.close()
            return
        with self.lock:
            self.running += 1
        try:
            await self._launch(reader, writer, request)
        finally:
            with self.lock:
                self.running -= 1
            writer.close()

    async def _launch(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]
    ) -> None:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            " ".join(request["argv"]),  # ssh's way: the words make one shell line
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self._cwd(request.get("cwd")),
            env=self.env,
            start_new_session=True,
        )
        with self.lock:
            self.groups.add(proc.pid)

        async def pump(stream: asyncio.StreamReader | None, kind: bytes) -> None:
            while stream is not None and (data := await stream.read(READ_CHUNK)):
                writer.write(frame(kind, data))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()

        async def watch_caller() -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
                while True:
                    await _read_frame_async(reader)
            _kill_group(proc.pid)  # the caller is gone (mpiexec ended): so is the launch

        outputs = [
            asyncio.ensure_future(pump(proc.stdout, b"o")),
            asyncio.ensure_future(pump(proc.stderr, b"r")),
        ]
        watcher = asyncio.ensure_future(watch_caller())
        try:
            code = await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*outputs), OUTPUT_DRAIN_S)
            status = 128 - code if code < 0 else code
            writer.write(frame(b"x", struct.pack(">i", status)))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            watcher.cancel()
            for task in outputs:
                task.cancel()
            _kill_group(proc.pid)
            with self.lock:
                self.groups.discard(proc.pid)


async def _read_frame_async(reader: asyncio.StreamReader, limit: int = 0) -> tuple[bytes, bytes]:
    kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > (limit or MAX_FRAME_BYTES):
        raise ValueError(f"a launch frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    return kind, await reader.readexactly(size)


def main(args: list[str]) -> int:
    """Run the command as ssh would, on the named host's member."""
    try:
        host, command = split_arguments(args)
        path = os.environ[LAUNCH_MAP_VARIABLE]
        with open(path, encoding="utf-8") as handle:
            launch = json.load(handle)
    except (ValueError, KeyError, OSError) as exc:
        sys.stderr.write(f"azm-mpi-launch: {exc}\n")
        return CONNECTION_FAILED
    if not command:
        sys.stderr.write("azm-mpi-launch: no command (an interactive login is not offered)\n")
        return CONNECTION_FAILED
    if host == launch.get("self"):
        env = dict(os.environ, **{HOST_VARIABLE: host})
        # as ssh does: the words make one line for the shell
        os.execvpe("bash", ["bash", "-c", " ".join(command)], env)
    return run_remote(launch, host, command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
