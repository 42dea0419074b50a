"""The emulator's HTTPS server against hostile clients: silent sockets, lying lengths, deep JSON."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest

from azmanagers.emulator import Emulator, server, start_emulator

SUB = "00000000-0000-0000-0000-0000000000dd"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = start_emulator(run_instances=False)
    try:
        yield emulator
    finally:
        emulator.stop()


def tls_socket(emu: Emulator) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(emu.server.ca_file))
    raw = socket.create_connection(("127.0.0.1", emu.server.port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def exchange(emu: Emulator, head: str, body: bytes = b"") -> tuple[int, dict[str, object]]:
    """Send a raw request; return the status and the JSON answer."""
    with tls_socket(emu) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        header, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += conn.recv(65536)
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(rest) if rest else {}


def authed(emu: Emulator, method: str, path: str, extra: str) -> str:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {emu.server.token}\r\n{extra}"
    )


def test_a_client_that_connects_and_says_nothing_does_not_hold_up_others(emu: Emulator) -> None:
    silent = socket.create_connection(("127.0.0.1", emu.server.port))
    try:
        status, body = exchange(
            emu, "GET /metadata/endpoints?api-version=2022-09-01 HTTP/1.1\r\nHost: x\r\n"
        )
        assert status == 200 and body["resourceManager"]
    finally:
        silent.close()


def test_lengths_that_lie_are_refused_before_any_body_is_read(emu: Emulator) -> None:
    token_path = f"/{emu.service_principal.tenant_id}/oauth2/v2.0/token"
    for length in ("-1", "abc", "1e9", "9" * 40):
        status, body = exchange(
            emu, f"POST {token_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
        )
        assert (status, body["error"]["code"]) == (400, "InvalidHeader"), length
    status, _ = exchange(
        emu, f"POST {token_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n"
    )
    assert status == 413  # without reading a byte of it
    status, body = exchange(
        emu,
        authed(emu, "PUT", f"/subscriptions/{SUB}/resourcegroups/g?api-version=2021-04-01", "")
        + "Transfer-Encoding: chunked\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    assert (status, body["error"]["code"]) == (411, "LengthRequired")


def test_json_too_deep_or_not_utf8_is_a_400_not_a_500(emu: Emulator) -> None:
    path = f"/subscriptions/{SUB}/resourcegroups/g?api-version=2021-04-01"
    for payload in (b"[" * 100_000 + b"]" * 100_000, b'{"location": "\xff"}'):
        status, body = exchange(
            emu, authed(emu, "PUT", path, f"Content-Length: {len(payload)}\r\n"), payload
        )
        assert (status, body["error"]["code"]) == (400, "InvalidRequestContent")


def test_the_call_log_keeps_its_newest_calls_and_counts_from_the_start(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_CALLS", 8)
    for _ in range(11):
        exchange(emu, "GET /metadata/endpoints?api-version=2022-09-01 HTTP/1.1\r\nHost: x\r\n")
    assert len(emu.server.calls) <= 8 and emu.server.calls_dropped >= 3
    first, calls = emu.server.calls_since(0)
    assert first == emu.server.calls_dropped and first + len(calls) == 11
    first, calls = emu.server.calls_since(10)
    assert first == 10 and len(calls) == 1
