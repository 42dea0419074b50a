"""An emulated VM's network for Python programs in its containers: the VM's one address."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

_ANY = (None, "", "0.0.0.0", "::")


def _install(address: str) -> None:
    """Make this Python's listeners and connections use the VM's ``address``.

    Copied as ``sitecustomize.py`` onto the ``PYTHONPATH`` of a container the emulated
    ``docker`` runs (see ``guest_image``), this runs at the container's start. A VM on Azure
    has its own network, so a program there that listens on every interface (``0.0.0.0``,
    ``::``) listens on the VM's address; emulated VMs share this machine, so here such a
    listener gets ``AZMANAGERS_VM_ADDRESS`` (a loopback address of the VM's own) instead:
    two VMs' schedulers can both take port 8786, and nothing listens beyond loopback.
    Connections to loopback leave from that address too (the VM's source address). Only
    the standard library is used (the image's Python may lack the rest).
    """
    resolve = socket.getaddrinfo
    bind = socket.socket.bind

    def getaddrinfo(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        if flags & socket.AI_PASSIVE and host in _ANY:
            return resolve(address, port, socket.AF_INET, type, proto, flags)
        return resolve(host, port, family, type, proto, flags)

    def bind_on_own_address(self: socket.socket, where: Any) -> None:
        if self.family == socket.AF_INET and isinstance(where, tuple) and where[0] in _ANY:
            where = (address, *where[1:])
        bind(self, where)

    def from_own_address(self: socket.socket, where: Any) -> None:
        # an unbound IPv4 socket speaks from the VM's address, as on the VM's own network
        # (a UDP "connect" that finds the local address, as distributed's does, finds it)
        if (
            self.family == socket.AF_INET
            and isinstance(where, tuple)
            and str(where[0]).startswith("127.")
            and self.getsockname()[1] == 0
        ):
            with contextlib.suppress(OSError):
                bind(self, (address, 0))

    def connect(self: socket.socket, where: Any) -> None:
        from_own_address(self, where)
        connect_to(self, where)

    def connect_ex(self: socket.socket, where: Any) -> int:
        from_own_address(self, where)
        return connect_ex_to(self, where)

    connect_to, connect_ex_to = socket.socket.connect, socket.socket.connect_ex
    socket.getaddrinfo = getaddrinfo
    socket.socket.bind = bind_on_own_address  # type: ignore[method-assign,assignment]
    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]


if __name__ == "sitecustomize" and os.environ.get("AZMANAGERS_VM_ADDRESS"):
    _install(os.environ["AZMANAGERS_VM_ADDRESS"])
