"""The ARM/IMDS emulator: a faithful HTTPS test double of the Azure REST calls we make."""

from __future__ import annotations

from pathlib import Path

from azmanagers.emulator.arm import ArmState, build_router
from azmanagers.emulator.server import EmulatorServer


def start_emulator(
    *, token: str | None = None, folder: Path | None = None
) -> tuple[EmulatorServer, ArmState]:
    """Start the emulator on a free loopback port; return the server and its state."""
    state = ArmState()
    server = EmulatorServer(build_router(state), token=token, folder=folder).start()
    return server, state
