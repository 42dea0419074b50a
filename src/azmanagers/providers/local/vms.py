"""Stand-alone local VMs (detached VMs): one process-VM per folder under ``<root>/vms``."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from azmanagers.config.paths import HOME_ENV, atomic_write_json, read_json
from azmanagers.errors import ConfigError, ProviderError
from azmanagers.providers import boot
from azmanagers.providers.base import InstanceState, VMInfo, VMSpec
from azmanagers.providers.local import procvm

VM_FILE = "vm.json"
LOCAL_ADDRESS = "127.0.0.1"


_VM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""ASCII only, as everywhere else a name is checked: it names a folder."""


def _check_name(name: str) -> str:
    if not _VM_NAME.fullmatch(name):
        raise ConfigError(
            f"VM name {name!r}: use 1 to 64 letters, digits, '-' and '_' (it names a folder)."
        )
    return name


def read_tags(path: Path) -> dict[str, str] | None:
    """Return the tags of a record (``pool.json``, ``vm.json``); None when there is none.

    Raises
    ------
    ConfigError
        The record is not UTF-8, not JSON, not a JSON object, or its tags are not a map of
        strings; the message names the file.
    """
    if not path.exists():
        return None
    record: Any = read_json(path)
    if not isinstance(record, dict):
        raise ConfigError(
            f"{path} is not a JSON object: it cannot say whose it is. Look at it, then "
            f"remove its folder {path.parent} by hand if nothing runs there."
        )
    tags = record.get("tags", {})
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ConfigError(
            f"{path}: its 'tags' are not a map of strings. Look at it, then remove its "
            f"folder {path.parent} by hand if nothing runs there."
        )
    return tags


def _make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and each missing folder above it with mode 0700 (mkdir's
    ``parents=True`` would make those 0755); ``folder`` itself must not exist."""
    missing = [folder]
    while not missing[-1].parent.exists():
        missing.append(missing[-1].parent)
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=path != folder)


def _remove_half_made(folder: Path) -> None:
    """Stop what runs in a VM folder that has no record (its creator was killed part-way)
    and remove it: the caller holds the VM's name, so nothing else is making it."""
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get("AZMANAGERS_INSTANCE_DIR") == str(folder):
                proc.kill()
    shutil.rmtree(folder, ignore_errors=True)


class LocalVMs:
    """Process-VMs that run a VM's boot script; the address of each is 127.0.0.1."""

    def __init__(self, root: Path, caller_home: Path | None = None) -> None:
        self.root = root / "vms"
        self.caller_home = caller_home
        """The caller's AZMANAGERS_HOME, given to each VM: a VM deletes itself through
        ``get_provider("local")``, which finds it there (None for a provider made on another
        root, whose VMs cannot)."""
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def folder(self, name: str) -> Path:
        """The VM's folder (its disk)."""
        return self.root / _check_name(name)

    def create(self, spec: VMSpec) -> VMInfo:
        """Start the VM's boot script in a new process-VM; return the VM."""
        folder = self.folder(spec.name)
        with self._lock:
            if (folder / VM_FILE).exists():
                raise ProviderError(
                    f"a local VM named {spec.name!r} exists; delete it first (azm vm delete) "
                    "or pick another name."
                )
            if folder.exists():  # half-made by a create killed before it wrote vm.json
                _remove_half_made(folder)
            try:
                _make_private_dirs(folder)
            except OSError as exc:
                raise ProviderError(f"cannot create local VM {spec.name}: {exc}") from exc
            proc: subprocess.Popen[bytes] | None = None
            try:
                extra = {
                    "AZMANAGERS_INSTANCE_ID": spec.name,
                    "AZMANAGERS_AGENT_HOME": str(folder),
                }
                if self.caller_home is not None:
                    extra[HOME_ENV] = str(self.caller_home)
                env = procvm.instance_environment(folder, extra)
                try:
                    proc = procvm.start(folder, boot.render(spec.boot), env)
                except OSError as exc:
                    raise ProviderError(f"cannot start local VM {spec.name}: {exc}") from exc
                handle = procvm.handle_of(proc)
                atomic_write_json(
                    folder / VM_FILE,
                    {
                        "name": spec.name,
                        "pid": handle.pid,
                        "create_time": handle.create_time,
                        "created_at": time.time(),
                        "tags": dict(spec.tags),
                    },
                )
            except BaseException:  # an error or Ctrl-C: no half-made VM is left
                if proc is not None:
                    procvm.stop(procvm.handle_of(proc), proc, instance_dir=folder)
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._procs[spec.name] = proc
        info = self.get(spec.name)
        if info is None:  # pragma: no cover - we just wrote it
            raise ProviderError(f"local VM {spec.name} vanished as it was created.")
        return info

    def get(self, name: str) -> VMInfo | None:
        """Return the VM with its state, or None when there is no such VM."""
        folder = self.folder(name)
        info = read_json(folder / VM_FILE)
        if not isinstance(info, dict):
            return None
        proc = self._procs.get(name)
        if proc is not None:
            proc.poll()
        handle = procvm.ProcessHandle(int(info["pid"]), float(info["create_time"]))
        if procvm.is_alive(handle):
            state = InstanceState.RUNNING
        elif procvm.exit_status(folder) == 0:
            state = InstanceState.STOPPED
        else:
            state = InstanceState.FAILED
        return VMInfo(name=name, state=state, address=LOCAL_ADDRESS, tags=info.get("tags", {}))

    def delete(self, name: str) -> None:
        """Stop every process of the VM (its jobs too) and remove its folder."""
        folder = self.folder(name)
        info = read_json(folder / VM_FILE)
        if isinstance(info, dict):
            handle = procvm.ProcessHandle(int(info["pid"]), float(info["create_time"]))
            procvm.stop(handle, self._procs.pop(name, None), instance_dir=folder)
        shutil.rmtree(folder, ignore_errors=True)

    def records(self) -> list[tuple[str, Path]]:
        """(name, record file) of every local VM folder that has a record."""
        if not self.root.is_dir():
            return []
        return sorted((p.name, p / VM_FILE) for p in self.root.iterdir() if (p / VM_FILE).exists())

    def boot_log(self, name: str, tail_bytes: int = 4096) -> str:
        """The end of the VM's boot log."""
        return procvm.tail(self.folder(name) / procvm.BOOT_LOG_NAME, tail_bytes)
