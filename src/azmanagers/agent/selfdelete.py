"""Deletes a local detached VM from outside its processes: ``python -m
azmanagers.agent.selfdelete VM_FOLDER GRACE_S`` (started by its service after a
``persist=False`` job)."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    """Wait ``GRACE_S`` seconds, then stop the VM's processes and remove its folder."""
    from azmanagers.providers.local_vms import LocalVMs

    folder = Path(argv[0]).resolve()
    time.sleep(float(argv[1]))
    LocalVMs(folder.parent.parent).delete(folder.name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
