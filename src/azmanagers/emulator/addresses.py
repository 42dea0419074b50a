"""Private addresses for emulated NICs: loopback ones of this emulator's own when VMs run."""

from __future__ import annotations

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
    """Hands out NIC addresses that are never reused while the emulator runs.

    When VMs run as processes, their services listen on these addresses (on fixed ports), so
    two emulators on one machine (two test processes) must not share any: each takes a
    ``127.N.0.0/16`` of its own, held by a lock file until ``release``.
    """

    def __init__(self, running: bool) -> None:
        self._lock = threading.Lock()
        self._next = itertools.count()
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
        """A new address (never one handed out before by this pool)."""
        with self._lock:
            n = next(self._next)
        if n >= PER_NET:
            raise RuntimeError(f"the emulator has handed out {PER_NET} addresses")
        return f"{self.prefix}.{10 + n // 250}.{4 + n % 250}"

    def release(self) -> None:
        """Let another emulator take this pool's addresses."""
        if self._held is not None:
            with contextlib.suppress(OSError):
                os.close(self._held)
            self._held = None
