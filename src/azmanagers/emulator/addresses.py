"""Private addresses for emulated NICs: loopback ones of this emulator's own when VMs run."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import os
import tempfile
import threading
from pathlib import Path

FIRST_NET, LAST_NET = 1, 254
"""The second octet of ``127.N.0.0/16`` an emulator may take (one per running emulator)."""
PER_NET = 245 * 250
"""Addresses of one net: ``127.N.10.4`` to ``127.N.254.253``."""


class AddressPool:
    """Hands out NIC addresses; one given back is handed out again once the fresh ones are
    all taken (oldest given back first).

    When VMs run as processes, their services listen on these addresses (on fixed ports), so
    two emulators on one machine (two test processes) must not share any: each takes a
    ``127.N.0.0/16`` of its own, held by a lock file until ``release``. Fresh addresses go
    first so that a stopped VM's sockets are long closed before its address serves again.
    """

    def __init__(self, running: bool) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count()
        self._fresh_left = True
        self._returned: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Addresses given back, oldest first (a set in order: each at most once)."""
        self._held: int | None = None
        self.prefix = self._reserve() if running else "10.0"

    def _reserve(self) -> str:
        folder = Path(tempfile.gettempdir()) / f"azm-emulator-nets-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        start = os.getpid() % (LAST_NET - FIRST_NET + 1)
        for i in range(LAST_NET - FIRST_NET + 1):
            net = FIRST_NET + (start + i) % (LAST_NET - FIRST_NET + 1)
            fd = os.open(folder / f"{net}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._held = fd
            return f"127.{net}"
        raise RuntimeError("every 127.N.0.0/16 is taken by another emulator on this machine")

    def next(self) -> str:
        """An address no one holds: a fresh one, else the one given back longest ago."""
        with self._lock:
            if self._fresh_left:
                n = next(self._next)
                if n < PER_NET:
                    return f"{self.prefix}.{10 + n // 250}.{4 + n % 250}"
                self._fresh_left = False
            if not self._returned:
                raise RuntimeError(f"all {PER_NET} addresses of the emulator are in use")
            address, _ = self._returned.popitem(last=False)
            return address

    def give_back(self, address: str) -> None:
        """Return an address (its NIC is gone) to be handed out again; others are ignored."""
        if not address.startswith(self.prefix + "."):
            return
        with self._lock:
            self._returned[address] = None

    def release(self) -> None:
        """Let another emulator take this pool's addresses."""
        if self._held is not None:
            with contextlib.suppress(OSError):
                os.close(self._held)
            self._held = None
