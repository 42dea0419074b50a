"""Stand-alone local VMs (detached VMs): one process-VM per folder under ``<root>/vms``."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

from azmanagers.config.paths import atomic_write_json, read_json
from azmanagers.errors import ConfigError, ProviderError
from azmanagers.providers import boot
from azmanagers.providers.base import InstanceState, VMInfo, VMSpec
from azmanagers.providers.local import procvm
from azmanagers.providers.tags import TAG_CLUSTER, TAG_OWNER

_VM_FILE = "vm.json"
LOCAL_ADDRESS = "127.0.0.1"


def _check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_" for c in name) or len(name) > 64:
        raise ConfigError(
            f"VM name {name!r}: use 1 to 64 letters, digits, '-' and '_' (it names a folder)."
        )
    return name


class LocalVMs:
    """Process-VMs that run a VM's boot script; the address of each is 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root / "vms"
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def folder(self, name: str) -> Path:
        """The VM's folder (its disk)."""
        return self.root / _check_name(name)

    def create(self, spec: VMSpec) -> VMInfo:
        """Start the VM's boot script in a new process-VM; return the VM."""
        folder = self.folder(spec.name)
        with self._lock:
            if (folder / _VM_FILE).exists():
                raise ProviderError(
                    f"a local VM named {spec.name!r} exists; delete it first (azm vm delete) "
                    "or pick another name."
                )
            try:
                folder.mkdir(parents=True, mode=0o700)
            except OSError as exc:
                raise ProviderError(f"cannot create local VM {spec.name}: {exc}") from exc
            env = procvm.instance_environment(
                folder,
                {"AZMANAGERS_INSTANCE_ID": spec.name, "AZMANAGERS_AGENT_HOME": str(folder)},
            )
            try:
                proc = procvm.start(folder, boot.render(spec.boot), env)
            except OSError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise ProviderError(f"cannot start local VM {spec.name}: {exc}") from exc
            handle = procvm.handle_of(proc)
            self._procs[spec.name] = proc
            atomic_write_json(
                folder / _VM_FILE,
                {
                    "name": spec.name,
                    "pid": handle.pid,
                    "create_time": handle.create_time,
                    "created_at": time.time(),
                    "tags": dict(spec.tags),
                },
            )
        info = self.get(spec.name)
        if info is None:  # pragma: no cover - we just wrote it
            raise ProviderError(f"local VM {spec.name} vanished as it was created.")
        return info

    def get(self, name: str) -> VMInfo | None:
        """Return the VM with its state, or None when there is no such VM."""
        folder = self.folder(name)
        info = read_json(folder / _VM_FILE)
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
        info = read_json(folder / _VM_FILE)
        if isinstance(info, dict):
            handle = procvm.ProcessHandle(int(info["pid"]), float(info["create_time"]))
            procvm.stop(handle, self._procs.pop(name, None), instance_dir=folder)
        shutil.rmtree(folder, ignore_errors=True)

    def names(self) -> list[str]:
        """The names of every local VM."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / _VM_FILE).exists())

    def owned(self) -> list[tuple[str, dict[str, str]]]:
        """(name, tags) of every VM that carries our tags."""
        out = []
        for name in self.names():
            info = read_json(self.folder(name) / _VM_FILE)
            tags = info.get("tags", {}) if isinstance(info, dict) else {}
            if TAG_CLUSTER in tags and TAG_OWNER in tags:
                out.append((name, dict(tags)))
        return out

    def boot_log(self, name: str, tail_bytes: int = 4096) -> str:
        """The end of the VM's boot log."""
        return procvm.tail(self.folder(name) / procvm.BOOT_LOG_NAME, tail_bytes)
